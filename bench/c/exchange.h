/* The tiny exchange every contender serves, shared by responder.c and server.c: read the
 * request (up to 4096 bytes, until the blank line that ends the HTTP header or end of file),
 * then write a fixed short HTTP/1.0 reply. Returns 0 once the reply is written. (Writes to a
 * socket whose peer has gone raise SIGPIPE: server.c ignores it.) */
#include <string.h>
#include <unistd.h>

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

static int exchange(int in, int out) {
    char buffer[4096];
    size_t have = 0;
    while (have < sizeof buffer - 1) {
        ssize_t got = read(in, buffer + have, sizeof buffer - 1 - have);
        if (got <= 0) {
            break;
        }
        have += (size_t)got;
        buffer[have] = '\0';
        if (strstr(buffer, "\r\n\r\n") != NULL) {
            break;
        }
    }
    const char *next = reply;
    size_t left = sizeof reply - 1;
    while (left > 0) {
        ssize_t wrote = write(out, next, left);
        if (wrote <= 0) {
            return 1;
        }
        next += wrote;
        left -= (size_t)wrote;
    }
    return 0;
}
