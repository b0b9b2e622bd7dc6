/* fdleak.c - descriptor-leak check: which descriptors are open, by fcntl. */
#include "fdleak.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

static struct fdleak_snapshot suite_start;

bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

void fdleak_take(struct fdleak_snapshot *snap)
{
    for (int fd = 0; fd < FDLEAK_MAX; fd++)
        snap->open[fd] = fd_is_open(fd);
}

int fdleak_count_new(const struct fdleak_snapshot *snap)
{
    int leaked = 0;
    for (int fd = 0; fd < FDLEAK_MAX; fd++) {
        if (!snap->open[fd] && fd_is_open(fd)) {
            fprintf(stderr, "descriptor %d leaked\n", fd);
            leaked++;
        }
    }
    return leaked;
}

int fdleak_suite_setup(void **state)
{
    (void)state;
    fdleak_take(&suite_start);
    return 0;
}

void fdleak_suite_check(void **state)
{
    (void)state;
    assert_int_equal(fdleak_count_new(&suite_start), 0);
}
