# syntax=docker/dockerfile:1.19
FROM ocaml/opam:windows-server-msvc-ltsc2025-ocaml-5.4
WORKDIR C:/src
COPY obuilder-spec.opam ./obuilder-spec.opam
COPY obuilder.opam ./obuilder.opam
RUN echo (lang dune 3.0)> dune-project
RUN opam pin add -yn .
RUN --network=host opam install --deps-only -t obuilder
COPY --exclude=**/.git --exclude=**/_build --exclude=**/_opam . C:/src/
RUN opam exec -- dune build @install @runtest
