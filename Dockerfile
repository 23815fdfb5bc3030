# syntax=docker/dockerfile:1
# medflow's image: built with the pinned toolchain (rust-toolchain.toml) and the locked
# dependencies, run as a non-root user on a minimal Debian 12 runtime (distroless: no shell,
# no package manager).
#   docker build -t registry.clinic.example/medflow:0.1.0 .

# Node.js for the build only: http/build.rs bundles GraphiQL with npm (package-lock.json).
FROM docker.io/library/node:20.19-bookworm-slim AS node

FROM docker.io/library/rust:1.95.0-bookworm AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin medflow \
    && cp target/release/medflow /medflow \
    && mkdir -p /runtime-libs \
    && cp -L "/usr/lib/$(uname -m)-linux-gnu/libz.so.1" /runtime-libs/

# glibc, libgcc, CA certificates and a `nonroot` user (65532); zlib (librdkafka) is copied.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /runtime-libs/ /usr/lib/
COPY --from=build /medflow /usr/local/bin/medflow
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/medflow"]
CMD ["serve"]
