# syntax=docker/dockerfile:1
FROM patricoferris/macos-opam:macos-homebrew-ocaml-4.12
RUN ./local/bin/opam --version
