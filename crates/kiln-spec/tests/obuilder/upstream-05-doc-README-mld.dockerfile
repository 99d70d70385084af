FROM busybox@sha256:d366a4665ab44f0648d7a00ae3fae139d55e32f9712c67accd604bb55df9d05a
SHELL [ "/bin/sh", "-c" ]
RUN echo hello world
