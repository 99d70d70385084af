# syntax=docker/dockerfile:1
#escape=`
FROM windows-server-2022-amd64-ocaml-4.14.2
RUN --mount=type=cache,id=opam-archives,target=C:\Users\opam\AppData\Local\opam\download-cache opam install tar
