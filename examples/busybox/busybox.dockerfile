FROM busybox
SHELL [ "/bin/sh", "-c" ]
RUN echo hello world
