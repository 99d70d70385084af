FROM ocaml/opam:debian-12-ocaml-5.1@sha256:7f3a8ca3bb5ed4c4d41a0e5c0bfe61d7c56ad1d3f7fa7a4ea8b15a9b8b1d5b79
# debian-12-5.1_opam-2.1
USER 1000:1000
ENV CLICOLOR_FORCE="1"
ENV OPAMCOLOR="always"
WORKDIR /src
RUN sudo ln -f /usr/bin/opam-2.1 /usr/bin/opam
RUN opam init --reinit -ni
RUN uname -rs && opam exec -- ocaml -version && opam --version
WORKDIR /src
RUN sudo chown opam /src
RUN cd ~/opam-repository && (git cat-file -e 2f9ba6a || git fetch origin master) && git reset -q --hard 2f9ba6a && git log --no-decorate -n1 --oneline && opam update -u
COPY --chown=1000:1000 fmt.opam ./fmt.opam
RUN opam pin add -yn fmt.dev './'
RUN opam install --cli=2.1 --depext-only -y fmt.dev $DEPS
RUN opam install $DEPS
COPY --chown=1000:1000 . /src
RUN opam exec -- dune build @install @check @runtest && rm -rf _build
