/* SPDX-License-Identifier: MIT */
/*
 * workq: owners take turns (workq_submit_as), items nobody waits for are
 * dropped before they run (workq_cancel).
 */
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workq.h"

struct item {
	struct wq_item link;      /* first */
	int id;
};

static sem_t gate;            /* the first item waits on it: the rest queue meanwhile */
static sem_t started;         /* the first item runs */
static int order[64], n_order;
static int dropped;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void run(void *ctx, struct wq_item *w)
{
	struct item *it = (struct item *)w;

	(void)ctx;
	if (it->id == 0) {
		sem_post(&started);
		sem_wait(&gate);
	}
	pthread_mutex_lock(&mu);
	order[n_order++] = it->id;
	pthread_mutex_unlock(&mu);
}

static void drop(struct wq_item *w)
{
	dropped++;
	free(w);
}

static struct item *item(int id)
{
	struct item *it = calloc(1, sizeof(*it));

	assert_non_null(it);
	it->id = id;
	return it;
}

/* Take @n finished items, waiting for them. */
static void drain(struct workq *q, int n)
{
	while (n > 0) {
		struct wq_item *w = workq_poll(q);

		if (!w) {
			sched_yield();
			continue;
		}
		free(w);
		n--;
	}
}

static int position(int id)
{
	for (int i = 0; i < n_order; i++)
		if (order[i] == id)
			return i;
	return -1;
}

/* A owns 0..9, B owns 100, C owns 200, queued after all of A's: each runs
 * before A's third item, not after A's tenth. */
static void test_turns(void **state)
{
	static const int a = 1, b = 2, c = 3;
	struct workq *q;

	(void)state;
	n_order = 0;
	sem_init(&gate, 0, 0);
	sem_init(&started, 0, 0);
	assert_int_equal(workq_build(1, run, drop, NULL, &q), 0);
	workq_submit_as(q, &item(0)->link, &a);
	sem_wait(&started);
	for (int i = 1; i < 10; i++)
		workq_submit_as(q, &item(i)->link, &a);
	workq_submit_as(q, &item(100)->link, &b);
	workq_submit_as(q, &item(200)->link, &c);
	sem_post(&gate);
	drain(q, 12);
	assert_int_equal(n_order, 12);
	assert_int_equal(order[0], 0);
	assert_in_range(position(100), 1, 3);
	assert_in_range(position(200), 1, 3);
	/* A's own items keep their order */
	for (int i = 1, last = -1; i < 10; i++) {
		assert_true(position(i) > last);
		last = position(i);
	}
	workq_free(q);
	sem_destroy(&gate);
	sem_destroy(&started);
}

/* Plain workq_submit keeps the order of arrival. */
static void test_fifo(void **state)
{
	struct workq *q;

	(void)state;
	n_order = 0;
	sem_init(&gate, 0, 0);
	sem_init(&started, 0, 0);
	assert_int_equal(workq_build(1, run, drop, NULL, &q), 0);
	for (int i = 0; i < 8; i++)
		workq_submit(q, &item(i)->link);
	sem_post(&gate);
	drain(q, 8);
	for (int i = 0; i < 8; i++)
		assert_int_equal(order[i], i);
	workq_free(q);
	sem_destroy(&gate);
}

static bool odd(struct wq_item *w, void *arg)
{
	(void)arg;
	return ((struct item *)w)->id % 2;
}

/* Cancelled items are dropped, never run; the others run in their turns. */
static void test_cancel(void **state)
{
	static const int a = 1, b = 2;
	struct workq *q;

	(void)state;
	n_order = 0;
	dropped = 0;
	sem_init(&gate, 0, 0);
	sem_init(&started, 0, 0);
	assert_int_equal(workq_build(1, run, drop, NULL, &q), 0);
	for (int i = 0; i < 6; i++)
		workq_submit_as(q, &item(i)->link, i < 4 ? (const void *)&a : (const void *)&b);
	while (workq_pending(q) != 6)
		sched_yield();
	/* 0 runs (held at the gate); 1, 3 and 5 are not started */
	assert_int_equal(workq_cancel(q, odd, NULL), 3);
	assert_int_equal(dropped, 3);
	assert_int_equal(workq_pending(q), 3);
	sem_post(&gate);
	drain(q, 3);
	assert_int_equal(n_order, 3);
	assert_int_equal(position(1), -1);
	assert_int_equal(position(3), -1);
	assert_int_equal(position(5), -1);
	workq_free(q);
	sem_destroy(&gate);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_turns),
		cmocka_unit_test(test_fifo),
		cmocka_unit_test(test_cancel),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
