FROM windows-server-2022-amd64-ocaml-4.14.2
RUN opam install tar
