# syntax=docker/dockerfile:1.19
#escape=`
FROM ocaml/opam@sha256:cdd6e6604489d7700af2768f939439593c5c2f5e6585db8827297ec02d1113ef as dev
WORKDIR /src
ENV OPAM_REPO_MINGW_HASH="921b0eceb594f96c0c7f40bb2676783be4362aeb"
ENV OPAM_HASH="8187cd8d3681d53f5042b5da316fa3f5e005a247"
SHELL [ "/cygwin64/bin/bash.exe", "--login", "-c" ]
RUN cd /home/opam && mv opam-repository opam-repository-mingw && opam repository set-url default file://C:/cygwin64/home/opam/opam-repository-mingw && git clone https://github.com/ocaml/opam-repository.git && opam repository add --all --rank=2 opam file://C:/cygwin64/home/opam/opam-repository && git config --global --add safe.directory /home/opam/opam-repository-mingw
RUN cd /home/opam/opam-repository-mingw && (git cat-file -e $OPAM_REPO_MINGW_HASH || git fetch origin sunset) && git reset -q --hard $OPAM_REPO_MINGW_HASH && git --no-pager log --no-decorate -n1 --oneline && rsync -ar --update --exclude='.git' ./ /cygdrive/c/opam/.opam/repo/default
RUN cd /home/opam/opam-repository && (git cat-file -e $OPAM_HASH || git fetch origin master) && git reset -q --hard $OPAM_HASH && git --no-pager log --no-decorate -n1 --oneline && rsync -ar --update --exclude='.git' ./ /cygdrive/c/opam/.opam/repo/opam
RUN ocaml-env exec --64 -- opam update -u
SHELL [ "cmd", "/S", "/C" ]
COPY obuilder-spec.opam ./obuilder-spec.opam
COPY obuilder.opam ./obuilder.opam
RUN --mount=type=cache,id=opam-archives,target=/opam/.opam/download-cache ocaml-env exec --64 -- opam pin add -yn .
RUN --mount=type=cache,id=opam-archives,target=/opam/.opam/download-cache ocaml-env exec --64 -- opam depext -yu obuilder
RUN --mount=type=cache,id=opam-archives,target=/opam/.opam/download-cache ocaml-env exec --64 -- opam install --deps-only -t obuilder-spec
RUN --mount=type=cache,id=opam-archives,target=/opam/.opam/download-cache ocaml-env exec --64 -- opam install --deps-only -t obuilder
COPY --exclude=**/.git --exclude=**/_build --exclude=**/_opam --exclude=**/duniverse . /src/
RUN ocaml-env exec --64 -- dune build @install

FROM mcr.microsoft.com/windows/server:ltsc2022
RUN mkdir C:\obuilder
COPY --from=dev /cygwin64/usr/x86_64-w64-mingw32/sys-root/mingw/bin/libsqlite3-0.dll /obuilder/libsqlite3-0.dll
COPY --from=dev /src/_build/default/main.exe /obuilder/obuilder.exe
RUN /obuilder/obuilder.exe --help
