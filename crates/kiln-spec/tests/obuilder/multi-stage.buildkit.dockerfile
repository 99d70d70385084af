# syntax=docker/dockerfile:1.19
FROM ocaml/opam@sha256:02f01da51f1ed2ae4191f143a46a508e2a34652c11ad2715e2bbe8e0d36fc30d as dev
WORKDIR /src
USER 1000:1000
RUN sudo chown opam /src
ENV OPAMYES="true"
COPY --chown=1000:1000 app.opam ./app.opam
RUN --network=host --mount=type=cache,id=opam-archives,target=/home/opam/.opam/download-cache,uid=1000 opam pin add -yn . && opam install --deps-only .
COPY --chown=1000:1000 --exclude=**/.git --exclude=**/_build --exclude=**/_opam . /src/
RUN opam exec -- dune build @install

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y libev4
COPY --from=dev /src/_build/default/main.exe /usr/local/bin/app
RUN app --help
