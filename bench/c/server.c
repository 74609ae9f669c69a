/* The C ceilings: `server fork PORT` accepts and forks a child per connection (the practical
 * ceiling for fork-per-request on this machine); `server inline PORT` serves every connection in
 * its accept loop (the ceiling for a process that does not fork). Both bind 127.0.0.1:PORT (0:
 * an ephemeral port) with a listen backlog of 1024, print "listening on PORT" on stdout and
 * serve the same exchange as responder.c until killed. The fork server reaps its children with
 * waitpid(WNOHANG) after every accept, so that their CPU and page faults are added to its own
 * counters (cutime, cminflt) as they are for every other forking contender. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exchange.h"

static void serve(int fd) {
    exchange(fd, fd);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "fork") != 0 && strcmp(argv[1], "inline") != 0)) {
        fprintf(stderr, "usage: %s fork|inline PORT\n", argv[0]);
        return 64;
    }
    int forking = strcmp(argv[1], "fork") == 0;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)atoi(argv[2]));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 1024) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
        perror("bind");
        return 71;
    }
    printf("listening on %d\n", ntohs(address.sin_port));
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int connection = accept(listener, NULL, NULL);
        if (connection < 0) {
            continue;
        }
        if (!forking) {
            serve(connection);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(listener);
            serve(connection);
            _exit(0);
        }
        close(connection);
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
}
