/* testutil.h - helpers shared by the C tests: scratch files and timing. */
#ifndef NVTPM_TEST_UTIL_H
#define NVTPM_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

/* A new directory for this test's files, under $NVTPM_TEST_DIR (meson sets it
 * to the build directory: a real disk, where O_DIRECT works) or /tmp. */
const char *test_dir(void);

/* A file of size bytes filled with byte, in test_dir(); returns its path
 * (static storage, valid until the next call with the same slot). */
const char *test_file(int slot, uint64_t size, int byte);

/* How many pages of [p, p + len) are resident (mincore); p page-aligned. */
size_t test_resident_pages(const void *p, size_t len);

/* Remove test_dir() and everything in it. */
void test_dir_remove(void);

/* The same as a cmocka group teardown. */
int test_dir_teardown(void **state);

int64_t test_now_ms(void);

/* CPU time (user + system) this process has used, in ms. */
int64_t test_cpu_ms(void);

/* Whether another open file description holds a lock on byte of path that
 * conflicts with a lock of type (F_RDLCK or F_WRLCK). */
bool test_lock_conflicts(const char *path, short type, uint64_t byte);

/* Same, through an already open descriptor (its own locks do not count). */
bool test_lock_conflicts_fd(int fd, short type, uint64_t byte);

/* Checks inside a forked child, which reports through its exit status. */
#define CHILD_CHECK(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "child check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
            _exit(10);                                                                             \
        }                                                                                          \
    } while (0)

/* Run body in a child process; returns its exit status (0 = all checks held). */
int test_run_child(void (*body)(void *), void *arg);

#endif
