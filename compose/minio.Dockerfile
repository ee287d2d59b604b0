# MinIO built from the Go module proxy at the same pinned version as compose/install-stack.sh
# (MinIO publishes no semver tags; this pseudo-version is commit 7aac2a2c5b7c).
FROM golang:1.26-bookworm AS build
ARG MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
RUN GOBIN=/out GOFLAGS=-buildvcs=false go install "github.com/minio/minio@${MINIO_VERSION}"

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/minio /usr/local/bin/minio
ENTRYPOINT ["minio"]
