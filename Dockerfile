# The tidings binary on a slim Debian. Built by compose.yaml.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --bin tidings

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
ENV TIDINGS_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["tidings"]
CMD ["serve"]
