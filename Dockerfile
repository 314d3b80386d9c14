# syntax=docker/dockerfile:1
# Build: docker build -t chat-api .   (BuildKit, the default builder)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# The workspace's other member (the benchmarks; not built here, but cargo
# reads every member's manifest).
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY bench/src ./bench/src
# The registry and the target directory are BuildKit cache mounts: they
# outlive the layer, so a code change rebuilds the service's own crate, not
# every dependency. The binary is copied out of the cached target directory
# (a cache mount is not part of the image).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
 && cp target/release/chat-api /usr/local/bin/chat-api \
 && strip /usr/local/bin/chat-api

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 chat
COPY --from=build /usr/local/bin/chat-api /usr/local/bin/chat-api
USER chat
ENV BIND_ADDR=0.0.0.0:3000
EXPOSE 3000
# The port comes from BIND_ADDR (`host:port`, `[::]:port`) as the container
# runs it, not a fixed 3000.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD sh -c 'curl -fsS "http://127.0.0.1:${BIND_ADDR##*:}/health/live" || exit 1'
ENTRYPOINT ["chat-api"]
CMD ["serve"]
