# The Tiercache service, for docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# `.git` is not in the context: pass the commit for tiercache_build_info
# (`docker build --build-arg TIERCACHE_COMMIT=$(git rev-parse --short=12 HEAD) .`).
ARG TIERCACHE_COMMIT=unknown
ENV TIERCACHE_COMMIT=$TIERCACHE_COMMIT
RUN cargo build --release -p tiercache-server

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tiercache-server /usr/local/bin/tiercache-server
ENV BIND_ADDR=0.0.0.0:8080
EXPOSE 8080
CMD ["tiercache-server"]
