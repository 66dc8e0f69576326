# The Tiercache service, for docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p tiercache-server

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tiercache-server /usr/local/bin/tiercache-server
ENV BIND_ADDR=0.0.0.0:8080
EXPOSE 8080
CMD ["tiercache-server"]
