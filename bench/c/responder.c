/* The tiny exchange on fds 0 and 1, for xinetd and tcpserver (fork+exec per connection):
 * read the request (up to 4096 bytes, until the blank line that ends the HTTP header or
 * end of file), write a fixed short HTTP/1.0 reply, exit (which closes the connection). */
#include <string.h>
#include <unistd.h>

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

int main(void) {
    char buffer[4096];
    size_t have = 0;
    while (have < sizeof buffer - 1) {
        ssize_t got = read(0, buffer + have, sizeof buffer - 1 - have);
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
        ssize_t wrote = write(1, next, left);
        if (wrote <= 0) {
            return 1;
        }
        next += wrote;
        left -= (size_t)wrote;
    }
    return 0;
}
