#!/usr/bin/env bash
# Installs the binaries of the local stack (`rawcap stack up`) into a cache directory:
#
#   $CACHE/kafka-<version>/jars/   Apache Kafka's broker jars + runtime deps (Maven Central)
#   $CACHE/bin/minio               MinIO server, built from the Go module proxy
#
# CACHE is $RAWCAP_STACK_CACHE or compose/.cache (where rawcap.stack looks for them).
# Idempotent: a step whose result is already there (and complete) is skipped.
# Needs: java (17+), mvn, go (1.24+; /usr/local/go/bin is searched too).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${RAWCAP_STACK_CACHE:-$HERE/.cache}"
POM="$HERE/kafka/pom.xml"
# MinIO publishes no semver tags, so the module proxy knows it by pseudo-version; this one
# is what `go install github.com/minio/minio@latest` resolved to (commit 7aac2a2c5b7c).
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
export PATH="$PATH:/usr/local/go/bin"

say() { echo "install-stack: $*"; }
need() { command -v "$1" >/dev/null || { say "error: $1 not found ($2)"; exit 1; }; }

mkdir -p "$CACHE/bin"

# --- Kafka --------------------------------------------------------------------------
JARS="$CACHE/kafka-$KAFKA_VERSION/jars"
if [ -f "$JARS/.complete" ] && [ -f "$JARS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  say "Kafka $KAFKA_VERSION jars present in $JARS"
else
  need java "install a JDK 17+, e.g. apt-get install openjdk-17-jre-headless"
  need mvn "apt-get install maven"
  say "downloading Apache Kafka $KAFKA_VERSION (org.apache.kafka:kafka_2.13) + runtime deps"
  tmp="$CACHE/kafka-$KAFKA_VERSION/jars.tmp"
  rm -rf "$tmp"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp"
  ls "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null
  rm -rf "$JARS"
  mv "$tmp" "$JARS"
  touch "$JARS/.complete"
  say "Kafka jars: $(ls "$JARS" | wc -l) files in $JARS"
fi

# --- MinIO --------------------------------------------------------------------------
MINIO="$CACHE/bin/minio"
have_minio() {
  [ -x "$MINIO" ] && command -v go >/dev/null \
    && go version -m "$MINIO" 2>/dev/null | grep -q "mod[[:space:]]*github.com/minio/minio[[:space:]]*$MINIO_VERSION"
}
if have_minio; then
  say "MinIO $MINIO_VERSION present at $MINIO"
else
  need go "install Go 1.24+ (the machine image has it in /usr/local/go)"
  say "building MinIO $MINIO_VERSION from the Go module proxy (a few minutes on 2 cores)"
  GOBIN="$CACHE/bin" GOFLAGS="-buildvcs=false" go install "github.com/minio/minio@$MINIO_VERSION"
  have_minio || { say "error: $MINIO was not built"; exit 1; }
  say "MinIO built at $MINIO"
fi
