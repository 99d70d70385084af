# syntax=docker/dockerfile:1
#escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
USER ContainerAdministrator
SHELL [ "cmd", "/S", "/C" ]
ENV OPAMROOT="C:\opam"
RUN echo hello & dir C:\
COPY src\app.ml C:\app\
RUN ocamlfind ocamlopt app.ml
