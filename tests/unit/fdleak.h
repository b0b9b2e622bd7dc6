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

/* A cmocka group setup: snapshots the descriptors open as the suite starts. */
int fdleak_suite_setup(void **state);

/* A cmocka test, run last: fails if a descriptor opened since
 * fdleak_suite_setup is still open. */
void fdleak_suite_check(void **state);

/* Whether descriptor fd is open. */
bool fd_is_open(int fd);

#endif
