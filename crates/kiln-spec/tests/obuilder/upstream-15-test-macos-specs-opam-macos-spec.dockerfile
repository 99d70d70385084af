FROM patricoferris/macos-opam:macos-homebrew-ocaml-4.12
RUN ./local/bin/opam --version
