#!/usr/bin/env bash
# Starts, checks and stops the real services shardline is tested against, with nothing but Java and Maven:
#   Apache Kafka (KRaft, single node) on 127.0.0.1:9092
#   Apache Cassandra 5.0 (stands in for ScyllaDB: same CQL protocol, same driver) on 127.0.0.1:9042
#   Apicurio Registry 3 (Confluent-compatible API under /apis/ccompat/v7) on 127.0.0.1:8081
# and, for the security tests, the same broker's second listener and a second Cassandra:
#   Kafka SASL_SSL (SCRAM-SHA-512, user `shardline`) on 127.0.0.1:9094, beside the plaintext listener
#   Cassandra "cassandra-tls": TLS only, client certificates required, PasswordAuthenticator, on 127.0.0.1:9142
#     (its own small instance, so the plaintext suite and the benchmarks never pay for authentication)
# The CA, certificates, key stores and passwords are made at first start under $SHARDLINE_STATE/secrets
# (never committed; see make_secrets).
#
# usage: scripts/services.sh up|down|status|logs [kafka|cassandra|registry|cassandra-tls ...]
#
# Jars come from Maven Central into $SHARDLINE_CACHE (default ~/.cache/shardline), outside the work tree, so
# later runs start without downloading. Data, logs and pid files live in $SHARDLINE_STATE (default
# .services/ in the repo). `up` is idempotent; `down` stops exactly the processes whose pid files it wrote.
# `up` refuses to start a service whose ports another process holds (and names that process), and says
# 'ready' only when the process it started is alive and is the one answering. Every service keeps its data
# across down/up, the registry included (its schemas and ids, in an H2 file under $SHARDLINE_STATE/registry);
# remove $SHARDLINE_STATE/NAME while NAME is down to start it empty.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/scripts/services"
CACHE=${SHARDLINE_CACHE:-$HOME/.cache/shardline}
STATE=${SHARDLINE_STATE:-$ROOT/.services}
KAFKA_VERSION=4.1.1
LOG4J_VERSION=2.25.2
CASSANDRA_VERSION=5.0.6
APICURIO_VERSION=3.0.9
REGISTRY_PORT=8081
WAIT_S=${SHARDLINE_SERVICE_WAIT_S:-180}
TLS_CQL_PORT=9142
TLS_STORAGE_PORT=7010
SECRETS=$STATE/secrets
ALL=(kafka cassandra registry cassandra-tls)

die() { echo "services.sh: $*" >&2; exit 1; }

need_tools() {
  command -v java >/dev/null || die "Java 17 or newer is needed (apt-get install openjdk-17-jre-headless)"
  local v
  v=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n1)
  [ "${v:-0}" -ge 17 ] || die "Java 17 or newer is needed, found '${v:-none}'"
  command -v mvn >/dev/null || die "Maven is needed to fetch the jars (apt-get install maven)"
  command -v python3 >/dev/null || die "python3 is needed for the readiness probes"
  command -v curl >/dev/null || die "curl is needed for the registry probe"
}

mvn_q() { mvn -B -q -ntp "$@" >"$CACHE/mvn.log" 2>&1 || { tail -n 40 "$CACHE/mvn.log" >&2; die "maven failed: $*"; }; }

# fetch_libs NAME "group:artifact:version ..." -> $CACHE/NAME/lib/*.jar (with transitive dependencies)
fetch_libs() {
  local name=$1 coords=$2 dir="$CACHE/$1"
  [ -f "$dir/.complete" ] && return 0
  echo "services.sh: fetching $name from Maven Central (once; cached in $dir)"
  rm -rf "$dir"; mkdir -p "$dir"
  {
    echo '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
    echo "<groupId>shardline.services</groupId><artifactId>$name</artifactId><version>1</version><dependencies>"
    local c g a v
    for c in $coords; do
      IFS=: read -r g a v <<<"$c"
      echo "<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
    done
    echo '</dependencies></project>'
  } >"$dir/pom.xml"
  mvn_q -f "$dir/pom.xml" dependency:copy-dependencies -DoutputDirectory="$dir/lib" -DincludeScope=runtime
  touch "$dir/.complete"
}

fetch_registry() {
  local dir="$CACHE/apicurio-$APICURIO_VERSION"
  [ -f "$dir/.complete" ] && return 0
  echo "services.sh: fetching Apicurio Registry $APICURIO_VERSION from Maven Central (once; cached in $dir)"
  rm -rf "$dir"; mkdir -p "$dir"
  mvn_q dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" -DoutputDirectory="$dir"
  tar -xzf "$dir"/apicurio-registry-app-*.tar.gz -C "$dir"
  rm -f "$dir"/apicurio-registry-app-*.tar.gz
  local run
  # 3.x archives hold either quarkus-app/quarkus-run.jar (fast-jar) or *-runner.jar beside lib/ (legacy-jar).
  run=$(find "$dir" \( -name quarkus-run.jar -o -name '*-runner.jar' \) | head -n1)
  [ -n "$run" ] || die "no quarkus-run.jar or *-runner.jar in the Apicurio archive"
  echo "$run" >"$dir/run-jar"
  touch "$dir/.complete"
}

fetch() {
  mkdir -p "$CACHE"
  case $1 in
    kafka) fetch_libs "kafka-$KAFKA_VERSION" "org.apache.kafka:kafka_2.13:$KAFKA_VERSION org.apache.kafka:kafka-tools:$KAFKA_VERSION org.apache.logging.log4j:log4j-slf4j2-impl:$LOG4J_VERSION org.apache.logging.log4j:log4j-core:$LOG4J_VERSION" ;;
    cassandra|cassandra-tls) fetch_libs "cassandra-$CASSANDRA_VERSION" "org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION" ;;
    registry) fetch_registry ;;
  esac
}

# The test PKI and passwords, made once under $SECRETS (mode 700; .services/ is ignored by git):
#   ca.crt/.key            the CA the brokers' and nodes' certificate and the client certificate come from
#   server.crt/.key        for 127.0.0.1 and localhost (both services), also as server.p12 for the JVMs
#   client.crt/.key        CN=shardline, for mutual TLS to cassandra-tls
#   other-ca.crt, other-client.crt/.key   a second CA and a client certificate from it (refusal tests)
#   truststore.p12         ca.crt, which cassandra-tls checks client certificates against
#   store-password         the PKCS#12 stores' password
#   kafka-password         SCRAM-SHA-512 password of Kafka user `shardline`
#   cassandra-password     password of cassandra-tls role `shardline` (the tests create the role)
# Random passwords: a test greps shardline's output for them, so they must not be guessable words.
make_secrets() {
  [ -f "$SECRETS/.complete" ] && return 0
  local n
  for n in kafka cassandra-tls; do
    running "$n" && die "$SECRETS is incomplete while $n runs with the old certificates: stop it first (services.sh down $n)"
  done
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates (apt-get install openssl)"
  command -v keytool >/dev/null || die "keytool (from the JDK) is needed to make the trust store"
  echo "services.sh: making the test CA, certificates and passwords in $SECRETS (once)"
  rm -rf "$SECRETS"; mkdir -p "$SECRETS"; chmod 700 "$SECRETS"
  # A subshell on the left of || runs with `set -e` off whatever it says: every step checks itself.
  (cd "$SECRETS" && umask 077 && secrets_here) || die "making the test certificates in $SECRETS failed"
  for n in ca.crt server.p12 truststore.p12 client.crt client.key other-ca.crt other-client.crt other-client.key \
    store-password kafka-password cassandra-password; do
    [ -s "$SECRETS/$n" ] || die "making the test certificates: $SECRETS/$n is missing or empty"
  done
  touch "$SECRETS/.complete"
}

# The steps of make_secrets, in the secrets folder. Passwords go to the tools as files, never on a
# command line (where `ps` would show them).
secrets_here() {
  local f
  for f in store-password kafka-password cassandra-password; do
    openssl rand -hex 16 | tr -d '\n' >"$f" || return 1
  done
  ca() { openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" -keyout "$1.key" -out "$1.crt" 2>/dev/null; }
  leaf() { # leaf NAME CA CN [SAN]
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$1.key" -out "$1.csr" 2>/dev/null || return 1
    printf '%s\n' "basicConstraints=CA:FALSE" ${4:+"subjectAltName=$4"} >"$1.ext" || return 1
    openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null || return 1
    rm -f "$1.csr" "$1.ext"
  }
  ca ca "shardline test CA" || return 1
  ca other-ca "another CA" || return 1
  leaf server ca localhost "IP:127.0.0.1,DNS:localhost" || return 1
  leaf client ca shardline || return 1
  leaf other-client other-ca shardline || return 1
  openssl pkcs12 -export -in server.crt -inkey server.key -certfile ca.crt -name server \
    -out server.p12 -passout file:store-password || return 1
  keytool -importcert -noprompt -alias ca -file ca.crt -keystore truststore.p12 -storetype PKCS12 \
    -storepass:file store-password >/dev/null 2>&1 || return 1
  chmod 644 ./*.crt
}

pidfile() { echo "$STATE/$1.pid"; }
# Every stop of the JVM's threads (GC pauses and other safepoints), with wall-clock times, so the
# benchmark can tell a latency tail that is the JVMs' from one that is shardline's (scripts/bench.py).
safepoint_log() { echo "-Xlog:safepoint:file=$STATE/$1-safepoints.log:time:filecount=2,filesize=20M"; }
logfile() { echo "$STATE/$1.log"; }

# Running means: our pid file, a live process, and that process carries our marker (no pid reuse surprises).
running() {
  local pf pid cmd
  pf=$(pidfile "$1"); [ -f "$pf" ] || return 1
  pid=$(cat "$pf"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Read whole, then matched: `tr | grep -q` under pipefail can fail with SIGPIPE once grep has its match.
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"-Dshardline.service=$1 "* ]]
}

probe() {
  case $1 in
    kafka) python3 "$HERE/probe.py" kafka 127.0.0.1:9092 && python3 "$HERE/probe.py" tls 127.0.0.1:9094 "$SECRETS/ca.crt" ;;
    cassandra) python3 "$HERE/probe.py" cql 127.0.0.1:9042 ;;
    cassandra-tls) python3 "$HERE/probe.py" cql-tls "127.0.0.1:$TLS_CQL_PORT" "$SECRETS" ;;
    registry) curl -fsS -m 3 "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects" >/dev/null && echo "registry: ccompat API answers" ;;
  esac
}

# The TCP ports NAME listens on, read from the configs it is started with.
ports() {
  case $1 in
    kafka) sed -nE 's/^listeners=//p' "$HERE/kafka.properties" | grep -oE ':[0-9]+' | tr -d : ;;
    cassandra) sed -nE 's/^(native_transport_port|storage_port): *([0-9]+).*/\2/p' "$HERE/cassandra.yaml" ;;
    cassandra-tls) printf '%s\n' "$TLS_CQL_PORT" "$TLS_STORAGE_PORT" ;;
    registry) echo "$REGISTRY_PORT" ;;
  esac
}

# foreign_holders NAME [PID]: one line "port P (NAME) is held by pid X (cwd D): CMD" per listener on one of
# NAME's ports that is not PID. Nothing: the ports are free or PID's. /proc only (scripts/services/ports.py).
foreign_holders() {
  local name=$1 ours=${2:-} port pid desc out
  # shellcheck disable=SC2046 # one argument per port
  out=$(python3 "$HERE/ports.py" $(ports "$name")) || out=""
  while read -r port pid desc; do
    [ -n "$port" ] || continue
    [ -n "$ours" ] && [ "$pid" = "$ours" ] && continue
    echo "port $port ($name) is held by $desc"
  done <<<"$out"
  return 0
}

launch() { # launch NAME cmd... : detached, own session, output only to the log file
  local name=$1; shift
  mkdir -p "$STATE"
  setsid "$@" >"$(logfile "$name")" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

kafka_java() { java -Dlog4j2.configurationFile="$HERE/kafka-log4j2.properties" -cp "$CACHE/kafka-$KAFKA_VERSION/lib/*" "$@"; }

# The SCRAM user is added when the storage is formatted (StorageTool takes it on its command line only:
# briefly visible in `ps` on this test machine); scram.done holds a digest of the password it was
# given, so a storage formatted before this listener existed (or new secrets) gets it through the plaintext
# listener once the broker is up (kafka_scram_user).
scram_digest() { sha256sum "$SECRETS/kafka-password" | cut -d' ' -f1; }

start_kafka() {
  local dir="$STATE/kafka"
  mkdir -p "$dir"
  local text
  text=$(<"$HERE/kafka.properties")
  text=${text//@STATE@/$dir}
  text=${text//@SECRETS@/$SECRETS}
  text=${text//@STOREPASS@/$(<"$SECRETS/store-password")}
  # It holds the key store's password: readable by its owner only (an older file may be 0644).
  rm -f "$dir/server.properties"
  (umask 077 && printf '%s\n' "$text" >"$dir/server.properties")
  local jopts=(-Dlog4j2.configurationFile="$HERE/kafka-log4j2.properties") cp="$CACHE/kafka-$KAFKA_VERSION/lib/*"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local id
    id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" \
      --add-scram "SCRAM-SHA-512=[name=shardline,password=$(<"$SECRETS/kafka-password")]" \
      >"$STATE/kafka-format.log" 2>&1 \
      || { sed "s/$(<"$SECRETS/kafka-password")/<password>/g" "$STATE/kafka-format.log" >&2; die "kafka storage format failed"; }
    scram_digest >"$dir/scram.done"
  fi
  launch kafka java -Dshardline.service=kafka -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 "$(safepoint_log kafka)" \
    "${jopts[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties"
}

kafka_scram_user() {
  local dir="$STATE/kafka" pw
  [ "$(cat "$dir/scram.done" 2>/dev/null)" = "$(scram_digest)" ] && return 0
  pw=$(cat "$SECRETS/kafka-password")
  # (--add-config-file would keep the password off the command line, but 4.1's parser reads the
  # mechanism's name from a file as SCRAM_SHA_512 and refuses it.)
  kafka_java kafka.admin.ConfigCommand --bootstrap-server 127.0.0.1:9092 --alter --entity-type users \
    --entity-name shardline --add-config "SCRAM-SHA-512=[password=$pw]" >"$STATE/kafka-scram.log" 2>&1 \
    || { sed "s/$pw/<password>/g" "$STATE/kafka-scram.log" >&2; die "adding the SCRAM user to kafka failed"; }
  scram_digest >"$dir/scram.done"
  echo "services.sh: kafka SCRAM user 'shardline' set"
}

start_cassandra() {
  local dir="$STATE/cassandra"
  mkdir -p "$dir/conf"
  sed "s#@STATE@#$dir#g" "$HERE/cassandra.yaml" >"$dir/conf/cassandra.yaml"
  launch_cassandra cassandra "$dir" -Xms2g -Xmx2g -Xmn512m
}

# The secured instance: the same config with its own ports and cluster name, PasswordAuthenticator, and
# client_encryption_options (TLS only, a client certificate from ca.crt required: 5.0's
# require_client_auth is a boolean, so every client of this node presents one; the tests show that a
# client without one, or with one from another CA, is refused). A small heap: it only
# ever holds the security tests' few rows.
start_cassandra_tls() {
  local dir="$STATE/cassandra-tls" pw
  pw=$(cat "$SECRETS/store-password")
  mkdir -p "$dir/conf"
  rm -f "$dir/conf/cassandra.yaml"
  # It holds the stores' password: created 0600 (the redirect inside the umask's subshell).
  (
    umask 077
    {
    sed -e "s#@STATE@#$dir#g" -e 's/^cluster_name: .*/cluster_name: shardline-tls/' \
      -e "s/^native_transport_port: .*/native_transport_port: $TLS_CQL_PORT/" \
      -e "s/^storage_port: .*/storage_port: $TLS_STORAGE_PORT/" \
      -e "s/127.0.0.1:7000/127.0.0.1:$TLS_STORAGE_PORT/" \
      -e 's/^authenticator: .*/authenticator: PasswordAuthenticator/' "$HERE/cassandra.yaml"
    cat <<YAML
client_encryption_options:
  enabled: true
  optional: false
  keystore: $SECRETS/server.p12
  keystore_password: $pw
  truststore: $SECRETS/truststore.p12
  truststore_password: $pw
  store_type: PKCS12
  require_client_auth: true
YAML
    } >"$dir/conf/cassandra.yaml"
  )
  launch_cassandra cassandra-tls "$dir" -Xms768m -Xmx768m -Xmn192m
}

launch_cassandra() { # launch_cassandra NAME DIR HEAP-OPTIONS...
  local name=$1 dir=$2; shift 2
  local lib="$CACHE/cassandra-$CASSANDRA_VERSION/lib"
  mkdir -p "$dir/logs"
  local agent=() jamm
  jamm=$(ls "$lib"/jamm-*.jar 2>/dev/null | head -n1 || true)
  [ -n "$jamm" ] && agent=(-javaagent:"$jamm")
  # The Java 17 module list of Cassandra 5.0's conf/jvm17-server.options.
  local jpms=(
    -Djdk.attach.allowAttachSelf=true -Djava.security.manager=allow
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
    --add-exports java.base/sun.nio.ch=ALL-UNNAMED --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.math=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED --add-opens java.base/java.net=ALL-UNNAMED
  )
  launch "$name" java -Dshardline.service="$name" "$@" -XX:+UseG1GC -Xss512k "$(safepoint_log "$name")" \
    "${jpms[@]}" "${agent[@]}" \
    -Dcassandra.config="file://$dir/conf/cassandra.yaml" -Dcassandra.storagedir="$dir" \
    -Dcassandra.logdir="$dir/logs" -Dlogback.configurationFile="$HERE/cassandra-logback.xml" \
    -Dcassandra-foreground=yes -Dcassandra.unsafesystem=true -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.ring_delay_ms=100 -Dcassandra.superuser_setup_delay_ms=0 \
    -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon
}

# Schemas and their ids live in an H2 database file, $STATE/registry/registry.mv.db, so a restart keeps
# them (a Confluent registry keeps them in its _schemas topic; Apicurio's default H2 database is in memory,
# jdbc:h2:mem:db_${quarkus.uuid}, and forgot every id on restart, so records already in Kafka pointed at
# unknown ids). The property is apicurio.datasource.url: the application.properties inside
# apicurio-registry-app-3.0.9-runner.jar sets `apicurio.datasource.url=jdbc:h2:mem:db_${quarkus.uuid}` and
# `quarkus.datasource.h2.jdbc.url=${apicurio.datasource.url}` (the datasource `apicurio.storage.sql.kind=h2`
# selects), and the 3.x migration guide maps REGISTRY_DATASOURCE_URL to APICURIO_DATASOURCE_URL. User and
# password are pinned to that file's defaults (apicurio.datasource.username/password=sa): the database file
# keeps the credentials it was created with. apicurio.sql.init=true (also the default) creates the tables
# when the file is new and leaves an existing database as it is. H2 closes the file cleanly when the JVM
# exits (its default DB_CLOSE_ON_EXIT=TRUE), which `down`'s SIGTERM triggers; after a kill -9 H2 recovers
# the file to its last write (it writes committed changes within about a second).
start_registry() {
  local run dir="$STATE/registry"
  run=$(cat "$CACHE/apicurio-$APICURIO_VERSION/run-jar")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P) # H2 needs an absolute path; SHARDLINE_STATE may be relative
  case $dir in *';'*) die "the registry's state directory '$dir' contains ';', which a JDBC URL cannot hold";; esac
  launch registry java -Dshardline.service=registry -Xms128m -Xmx512m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" -Dapicurio.storage.kind=sql \
    -Dapicurio.storage.sql.kind=h2 -Dapicurio.datasource.url="jdbc:h2:file:$dir/registry" \
    -Dapicurio.datasource.username=sa -Dapicurio.datasource.password=sa -Dapicurio.sql.init=true \
    -jar "$run"
}

# Ready means: the process we started is alive, the probe answers, and nobody else listens on the
# service's ports (else the answer may come from another process while ours has died or is failing to bind).
wait_ready() {
  local name=$1 deadline=$((SECONDS + WAIT_S)) pid others=""
  pid=$(cat "$(pidfile "$name")" 2>/dev/null || true)
  while :; do
    # Asked twice, a second apart: right after `launch` (before the fork's exec) the pid's /proc
    # cmdline is still this script's, and mid-exec it can be unreadable, so one answer may wrongly
    # say the service is gone (CI saw "exited during start-up" with an empty log; 4 in 100 launches
    # read the script's cmdline at once here).
    if ! running "$name" && { sleep 1; ! running "$name"; }; then
      echo "services.sh: $name (pid ${pid:-?}) exited during start-up; the end of $(logfile "$name"):" >&2
      tail -n 60 "$(logfile "$name")" >&2 || true
      foreign_holders "$name" | sed 's/^/services.sh: /' >&2
      return 1
    fi
    if probe "$name" >/dev/null 2>&1; then
      others=$(foreign_holders "$name" "$pid")
      [ -z "$others" ] && running "$name" && break
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "services.sh: $name (pid ${pid:-?}) did not answer within ${WAIT_S}s; the end of $(logfile "$name"):" >&2
      tail -n 60 "$(logfile "$name")" >&2 || true
      [ -z "$others" ] || echo "services.sh: another process answers in its place: $others" >&2
      return 1
    fi
    sleep 1
  done
  echo "services.sh: $name ready (pid $pid; $(probe "$name" 2>/dev/null | tail -n1))"
}

up() {
  need_tools
  local n waiting=() taken="" t
  for n in "$@"; do fetch "$n"; done
  make_secrets
  # Before starting anything: a port held by another process (another checkout's services, a leftover
  # of a pid file's lost process, anything else) would make the new process exit while the holder answers
  # the probe.
  for n in "$@"; do
    running "$n" && continue
    t=$(foreign_holders "$n")
    [ -z "$t" ] || taken+="$t"$'\n'
  done
  if [ -n "$taken" ]; then
    while IFS= read -r t; do [ -z "$t" ] || echo "services.sh: $t" >&2; done <<<"$taken"
    die "not starting: stop the process(es) above first (services.sh down in the checkout or state dir that started them, or kill PID); this state dir is $STATE"
  fi
  for n in "$@"; do
    if running "$n"; then echo "services.sh: $n already running (pid $(cat "$(pidfile "$n")"))"
    else "start_${n//-/_}"; fi
    waiting+=("$n")
  done
  for n in "${waiting[@]}"; do wait_ready "$n" || exit 1; done
  for n in "${waiting[@]}"; do [ "$n" = kafka ] && kafka_scram_user; done
  return 0
}

down() {
  local n pid i
  for n in "$@"; do
    if ! running "$n"; then rm -f "$(pidfile "$n")"; continue; fi
    pid=$(cat "$(pidfile "$n")")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then echo "services.sh: $n ignored SIGTERM for 30s, killing" >&2; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$(pidfile "$n")"
    echo "services.sh: $n stopped"
  done
}

status() {
  local n rc=0
  for n in "$@"; do
    if running "$n"; then
      if out=$(probe "$n" 2>&1); then echo "$n: running (pid $(cat "$(pidfile "$n")")), $out"
      else echo "$n: running (pid $(cat "$(pidfile "$n")")), not answering: $out"; rc=1; fi
    else
      echo "$n: stopped"; rc=1
      foreign_holders "$n" | sed 's/^/  but /'
    fi
  done
  return $rc
}

cmd=${1:-}; shift || true
names=("$@"); [ ${#names[@]} -eq 0 ] && names=("${ALL[@]}")
for n in "${names[@]}"; do case $n in kafka|cassandra|registry|cassandra-tls) ;; *) die "unknown service '$n' (kafka, cassandra, registry, cassandra-tls)";; esac; done
case $cmd in
  up) up "${names[@]}" ;;
  down) down "${names[@]}" ;;
  status) status "${names[@]}" ;;
  logs) for n in "${names[@]}"; do echo "== $(logfile "$n")"; tail -n 40 "$(logfile "$n")" 2>/dev/null || echo "(no log)"; done ;;
  fetch) need_tools; for n in "${names[@]}"; do fetch "$n"; done ;;
  *) die "usage: scripts/services.sh up|down|status|logs|fetch [kafka|cassandra|registry|cassandra-tls ...]" ;;
esac
