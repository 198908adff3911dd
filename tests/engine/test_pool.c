/*
 * The CPU backend's thread pool (kernels/cpu/pool.c): every task of every
 * call runs exactly once and its writes are visible when pool_run
 * returns, whether the workers were spinning on the next generation or
 * asleep on the condition variable, and whether the caller found the last
 * worker done or had to sleep for it. Calls microseconds apart keep
 * everyone spinning; pauses longer than the spin (50 µs) put the workers
 * to sleep; a task that sleeps puts the caller to sleep. Run under TSan
 * too (label tsan): the seq_cst pairs that replace the mutex on the fast
 * path are what it checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/pool.h"

enum { MAX_TASKS = 4096 };

struct job {
	int hits[MAX_TASKS];     /* plain writes: visible after pool_run */
	atomic_int calls;        /* fn calls, for the grain check */
	atomic_int workers_seen; /* a bit per worker index */
	int sleep_task;          /* this task sleeps 200 µs (-1: none) */
};

static void nap(long ns)
{
	struct timespec ts = { 0, ns };

	nanosleep(&ts, NULL);
}

static void tasks(void *arg, int worker, int begin, int end)
{
	struct job *j = arg;

	atomic_fetch_add_explicit(&j->calls, 1, memory_order_relaxed);
	atomic_fetch_or_explicit(&j->workers_seen, 1 << worker, memory_order_relaxed);
	for (int t = begin; t < end; t++) {
		if (t == j->sleep_task)
			nap(200000);
		j->hits[t]++;
	}
}

static void run_and_check_as(struct pool *p, struct job *j, int n, int grain, int sleep_task, int guided)
{
	memset(j->hits, 0, sizeof(j->hits));
	atomic_store(&j->calls, 0);
	j->sleep_task = sleep_task;
	if (guided)
		pool_run_guided(p, tasks, j, n, grain);
	else
		pool_run(p, tasks, j, n, grain);
	for (int t = 0; t < n; t++)
		assert_int_equal(j->hits[t], 1);
	for (int t = n; t < MAX_TASKS; t++)
		assert_int_equal(j->hits[t], 0);
	/* chunks of `grain` (guided: at least grain, but the last): never
	 * more calls than chunks */
	assert_true(atomic_load(&j->calls) <= (n + grain - 1) / (grain < 1 ? 1 : grain));
}

static void run_and_check(struct pool *p, struct job *j, int n, int grain, int sleep_task)
{
	run_and_check_as(p, j, n, grain, sleep_task, 0);
}

static void test_pool_handoffs(void **state)
{
	static const int threads[] = { 1, 2, 3, 8 };

	(void)state;
	for (size_t ti = 0; ti < sizeof(threads) / sizeof(threads[0]); ti++) {
		struct job *j = calloc(1, sizeof(*j));
		struct pool *p = NULL;
		unsigned rng = 12345;

		assert_non_null(j);
		assert_int_equal(pool_create(threads[ti], &p), 0);
		assert_int_equal(pool_size(p), threads[ti]);
		for (int i = 0; i < 600; i++) {
			int n, grain, sleep_task = -1;

			rng = rng * 1103515245u + 12345u;
			n = (int)(rng >> 8) % MAX_TASKS;
			grain = 1 + (int)(rng >> 4) % 64;
			if (i % 50 == 7 && n > 0)
				sleep_task = (int)(rng >> 12) % n; /* the caller waits asleep */
			/* every third call with claims that shrink */
			run_and_check_as(p, j, n, grain, sleep_task, i % 3 == 1);
			if (i % 40 == 13)
				nap(300000); /* the workers go to sleep */
		}
		/* many small calls back to back: the spinning path */
		for (int i = 0; i < 20000 / threads[ti]; i++)
			run_and_check_as(p, j, 3 * threads[ti] + i % 5, 1, -1, i & 1);
		/* guided claims: few of them, all tasks once (4000 tasks on
		 * these threads: the claims shrink geometrically) */
		run_and_check_as(p, j, 4000, 1, -1, 1);
		assert_true(atomic_load(&j->calls) < 2 * threads[ti] * 12 + 2 * threads[ti] + 1);
		/* a pool of several threads shares the work at least once */
		if (threads[ti] > 1) {
			atomic_store(&j->workers_seen, 0);
			for (int i = 0; i < 200 && atomic_load(&j->workers_seen) <= 1; i++) {
				j->sleep_task = 0;
				pool_run(p, tasks, j, 64, 1);
			}
			assert_true(atomic_load(&j->workers_seen) > 1);
		}
		pool_destroy(p);
		free(j);
	}
	pool_destroy(NULL);
}

/* A pool destroyed while its workers sleep, and one destroyed while they
 * spin, joins them all (no hang, nothing leaked under ASan). */
static void test_pool_destroy(void **state)
{
	struct job *j = calloc(1, sizeof(*j));
	struct pool *p = NULL;

	(void)state;
	assert_non_null(j);
	assert_int_equal(pool_create(4, &p), 0);
	run_and_check(p, j, 100, 1, -1);
	nap(2000000);
	pool_destroy(p);
	assert_int_equal(pool_create(4, &p), 0);
	run_and_check(p, j, 100, 1, -1);
	pool_destroy(p);
	free(j);
}

static void sleepy(void *arg, int worker, int begin, int end)
{
	(void)arg;
	(void)worker;
	for (int t = begin; t < end; t++)
		nap(2000000);
}

struct reader {
	struct pool *p;
	atomic_int stop;
	int backwards; /* a counter seen smaller than before */
	long reads;
};

static void *read_stats(void *arg)
{
	struct reader *r = arg;
	struct pool_stats a = { 0 }, b;

	while (!atomic_load(&r->stop)) {
		pool_stats(r->p, &b);
		if (b.runs < a.runs || b.wall_ns < a.wall_ns || b.busy_ns < a.busy_ns || b.wake_ns < a.wake_ns)
			r->backwards++;
		a = b;
		r->reads++;
	}
	return NULL;
}

/*
 * pool_stats: a run is counted only when the workers took part; its
 * threads' time in tasks is at least what the tasks slept and at most
 * threads x the run's time; the counters never go down, read from
 * another thread while runs go on (TSan: the slots' loads and stores).
 */
static void test_pool_stats(void **state)
{
	struct job *j = calloc(1, sizeof(*j));
	struct pool *p = NULL;
	struct pool_stats st;
	struct reader r = { 0 };
	pthread_t tid;

	(void)state;
	assert_non_null(j);
	assert_int_equal(pool_create(1, &p), 0);
	pool_run(p, sleepy, NULL, 2, 1);
	pool_stats(p, &st);
	assert_int_equal(st.threads, 1);
	assert_true(st.runs == 0 && st.wall_ns == 0 && st.busy_ns == 0);
	pool_destroy(p);

	assert_int_equal(pool_create(2, &p), 0);
	pool_stats(p, &st);
	assert_int_equal(st.threads, 2);
	assert_true(st.runs == 0 && st.wall_ns == 0 && st.busy_ns == 0 && st.wake_ns == 0);
	pool_run(p, sleepy, NULL, 1, 1); /* one chunk: on the caller alone */
	pool_stats(p, &st);
	assert_true(st.runs == 0 && st.busy_ns == 0);
	pool_run(p, sleepy, NULL, 8, 1); /* 16 ms of naps */
	pool_stats(p, &st);
	assert_int_equal(st.runs, 1);
	assert_true(st.busy_ns >= 16000000ull);
	assert_true(st.wall_ns >= 8000000ull);
	assert_true(st.busy_ns <= 2 * st.wall_ns);
	assert_true(st.wake_ns <= st.wall_ns);

	r.p = p;
	assert_int_equal(pthread_create(&tid, NULL, read_stats, &r), 0);
	for (int i = 0; i < 3000; i++)
		run_and_check(p, j, 8 + i % 7, 1, -1);
	atomic_store(&r.stop, 1);
	pthread_join(tid, NULL);
	assert_int_equal(r.backwards, 0);
	assert_true(r.reads > 0);
	pool_stats(p, &st);
	assert_true(st.runs >= 1 && st.runs <= 3001);
	assert_true(st.busy_ns <= 2 * st.wall_ns);
	pool_destroy(p);
	free(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_handoffs),
		cmocka_unit_test(test_pool_destroy),
		cmocka_unit_test(test_pool_stats),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
