/* The tiny exchange on fds 0 and 1, for xinetd and tcpserver (fork+exec per connection);
 * exiting closes the connection. */
#include "exchange.h"

int main(void) { return exchange(0, 1); }
