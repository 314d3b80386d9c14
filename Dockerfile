# Build: docker build -t chat-api .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# The workspace's other member (the benchmarks; not built here, but cargo
# reads every member's manifest).
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY bench/src ./bench/src
RUN cargo build --release --locked && strip target/release/chat-api

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 chat
COPY --from=build /src/target/release/chat-api /usr/local/bin/chat-api
USER chat
ENV BIND_ADDR=0.0.0.0:3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:3000/health/live || exit 1
ENTRYPOINT ["chat-api"]
CMD ["serve"]
