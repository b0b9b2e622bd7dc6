/* fdleak.h - a descriptor-leak check for test suites: snapshot the open
 * descriptors before, compare after. */
#ifndef NVTPM_TEST_FDLEAK_H
#define NVTPM_TEST_FDLEAK_H

#include <stdbool.h>

#define FDLEAK_MAX 1024

struct fdleak_snapshot {
    bool open[FDLEAK_MAX];
};

void fdleak_take(struct fdleak_snapshot *snap);

/* Number of descriptors open now that were not open in snap; each is printed. */
int fdleak_count_new(const struct fdleak_snapshot *snap);

/* Whether descriptor fd is open. */
bool fd_is_open(int fd);

#endif
