/* Round trips, timed one by one: `rtt OUT INTERVAL_US PORT:THREADS...` starts THREADS client
 * threads on each 127.0.0.1:PORT; each thread, again and again, connects, sends the exchange's
 * request, reads the reply to the end of the stream (the server closes) and records when the
 * round trip began and ended (CLOCK_MONOTONIC, as Python's time.perf_counter on Linux) and
 * whether it failed, then waits until INTERVAL_US after the round trip began (none when it took
 * longer). It prints "started" once its threads run; on SIGTERM or SIGINT each thread finishes
 * its round trip, and the records are written to OUT, 24 bytes each in the machine's byte
 * order: int64 begin ns, int64 end ns, int32 target (the PORT argument's index), int32 error
 * (0: the expected reply; an errno; -1: another reply; -2: a timeout, 10 s, connecting or
 * reading). Then "records N" on stdout, and exit status 0. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* the exchange: bench/harness/network.py's REQUEST, bench/handler.py's REPLY (exchange.h's) */
static const char request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

struct record {
    int64_t begin;
    int64_t end;
    int32_t target;
    int32_t error;
};

struct client {
    pthread_t thread;
    int target;
    int port;
    long interval_ns;
    struct record *records;
    size_t count;
    size_t capacity;
};

static volatile sig_atomic_t stopping = 0;

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int error_of(int number) {
    return (number == EAGAIN || number == EWOULDBLOCK || number == EINPROGRESS) ? -2 : number;
}

/* One round trip: 0, an errno, -1 (another reply) or -2 (a timeout). */
static int round_trip(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return errno;
    }
    struct timeval timeout = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int result = 0;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        result = error_of(errno);
    } else if (send(fd, request, sizeof request - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof request - 1)) {
        result = error_of(errno);
    } else {
        char buffer[256];
        size_t have = 0;
        for (;;) {
            ssize_t got = recv(fd, buffer + have, sizeof buffer - have, 0);
            if (got == 0) {
                break;
            }
            if (got < 0) {
                result = errno == EINTR ? 0 : error_of(errno);
                if (result != 0) {
                    break;
                }
                continue;
            }
            have += (size_t)got;
            if (have == sizeof buffer) {
                break;
            }
        }
        if (result == 0 && (have != sizeof reply - 1 || memcmp(buffer, reply, have) != 0)) {
            result = -1;
        }
    }
    close(fd);
    return result;
}

static void *run(void *argument) {
    struct client *client = argument;
    while (!stopping) {
        int64_t begin = now_ns();
        int error = round_trip(client->port);
        int64_t end = now_ns();
        if (client->count == client->capacity) {
            client->capacity = client->capacity ? client->capacity * 2 : 4096;
            client->records = realloc(client->records, client->capacity * sizeof *client->records);
            if (client->records == NULL) {
                perror("realloc");
                exit(71);
            }
        }
        client->records[client->count++] = (struct record){begin, end, client->target, error};
        int64_t wait = begin + client->interval_ns - now_ns();
        if (wait > 0 && !stopping) {
            struct timespec pause = {wait / 1000000000, wait % 1000000000};
            nanosleep(&pause, NULL);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s OUT INTERVAL_US PORT:THREADS...\n", argv[0]);
        return 64;
    }
    long interval_ns = atol(argv[2]) * 1000;
    size_t total = 0;
    for (int i = 3; i < argc; i++) {
        const char *colon = strchr(argv[i], ':');
        total += colon ? (size_t)atoi(colon + 1) : 1;
    }
    struct client *clients = calloc(total, sizeof *clients);
    if (clients == NULL) {
        perror("calloc");
        return 71;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    size_t next = 0;
    for (int i = 3; i < argc; i++) {
        const char *colon = strchr(argv[i], ':');
        int threads = colon ? atoi(colon + 1) : 1;
        for (int t = 0; t < threads; t++) {
            struct client *client = &clients[next++];
            client->target = i - 3;
            client->port = atoi(argv[i]);
            client->interval_ns = interval_ns;
            if (pthread_create(&client->thread, NULL, run, client) != 0) {
                perror("pthread_create");
                return 71;
            }
        }
    }
    printf("started\n");
    fflush(stdout);
    size_t records = 0;
    for (size_t i = 0; i < total; i++) {
        pthread_join(clients[i].thread, NULL);
        records += clients[i].count;
    }
    FILE *out = fopen(argv[1], "wb");
    if (out == NULL) {
        perror(argv[1]);
        return 73;
    }
    for (size_t i = 0; i < total; i++) {
        if (fwrite(clients[i].records, sizeof(struct record), clients[i].count, out) !=
            clients[i].count) {
            perror("fwrite");
            return 74;
        }
    }
    if (fclose(out) != 0) {
        perror("fclose");
        return 74;
    }
    printf("records %zu\n", records);
    fflush(stdout);
    return 0;
}
