#!/usr/bin/env bash
# A real Apache Kafka broker for local runs and tests: one KRaft node (broker + controller) on
# 127.0.0.1, its jars fetched once from Maven Central (scripts/kafka/pom.xml) and cached.
#
#   scripts/kafka.sh install   fetch the jars (skipped when cached)
#   scripts/kafka.sh start     format storage if new, start, wait until it serves (idempotent)
#   scripts/kafka.sh stop      stop it (SIGTERM, then SIGKILL after 20 s)
#   scripts/kafka.sh status    running or not
#
# Environment: NETSCOPE_KAFKA_PORT (9092), NETSCOPE_KAFKA_DIR (state: config, data, log, pid),
# NETSCOPE_KAFKA_HEAP (512m).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "${here}/lib.sh"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "${here}/kafka/pom.xml")"
libs="${NETSCOPE_KAFKA_LIBS:-${HOME}/.cache/netscope/kafka-${version}/libs}"
dir="${NETSCOPE_KAFKA_DIR:-${HOME}/.local/share/netscope/kafka}"
port="${NETSCOPE_KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
heap="${NETSCOPE_KAFKA_HEAP:-512m}"
# A fixed cluster id (16 bytes, URL-safe base64) so that a kept data directory stays valid.
cluster_id="bmV0c2NvcGUta2Fma2EtMQ"
pidfile="${dir}/kafka.pid"

say() { printf 'kafka: %s\n' "$*"; }

install() {
  if [ -f "${libs}/.complete" ]; then
    say "Kafka ${version} jars: cached in ${libs}"
    return
  fi
  say "Kafka ${version} jars: fetching from Maven Central into ${libs}"
  rm -rf "${libs}"
  mkdir -p "${libs}"
  mvn -q -B -f "${here}/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="${libs}"
  touch "${libs}/.complete"
}

running() {
  [ -f "${pidfile}" ] && kill -0 "$(cat "${pidfile}")" 2>/dev/null &&
    ! grep -q '^State:.*Z' "/proc/$(cat "${pidfile}")/status" 2>/dev/null
}

serving() {
  (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null && grep -q "Kafka Server started" "${dir}/kafka.log" 2>/dev/null
}

# exec: the broker's pid is the one recorded (run it in a subshell to keep the caller).
java_cmd() {
  exec java -Xms128m -Xmx"${heap}" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="${dir}/log4j2.properties" -cp "${libs}/*" "$@"
}

write_config() {
  mkdir -p "${dir}/data"
  cat > "${dir}/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${controller_port}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${dir}/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# NetScope refuses request messages over 2 MiB itself (message_too_large): let them arrive.
message.max.bytes=4194304
replica.fetch.max.bytes=4194304
PROPS
  cat > "${dir}/log4j2.properties" <<PROPS
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka.server.KafkaRaftServer
logger.kafka.level=INFO
logger.broker.name=kafka.server.BrokerServer
logger.broker.level=INFO
PROPS
}

start() {
  install
  if running; then
    say "already running (pid $(cat "${pidfile}")) on 127.0.0.1:${port}"
    return
  fi
  write_config
  if [ ! -f "${dir}/data/meta.properties" ]; then
    say "formatting storage in ${dir}/data (cluster ${cluster_id})"
    (java_cmd kafka.tools.StorageTool format -t "${cluster_id}" -c "${dir}/server.properties") \
      > "${dir}/format.log" 2>&1 || { cat "${dir}/format.log" >&2; exit 1; }
  fi
  say "starting Kafka ${version} on 127.0.0.1:${port}"
  : > "${dir}/kafka.log"
  nohup bash -c "$(declare -f java_cmd); heap='${heap}' dir='${dir}' libs='${libs}' java_cmd kafka.Kafka '${dir}/server.properties'" \
    >> "${dir}/kafka.log" 2>&1 < /dev/null &
  echo $! > "${pidfile}"
  wait_started 60 "${dir}/kafka.log" serving running "${pidfile}"
}

stop() {
  stop_pidfile "${pidfile}" running
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then say "running (pid $(cat "${pidfile}")) on 127.0.0.1:${port}"; else say "not running"; exit 3; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
