/* SPDX-License-Identifier: MIT */
/*
 * workq: owners take turns (workq_submit_as), an item another owner waits
 * for moves to that owner's turns when they come sooner (workq_share),
 * items nobody waits for are dropped before they run (workq_cancel).
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

/* Hold the thread in item 0 (@a's), and queue @a's items @ids after it,
 * into @its (item 0 first). */
static struct workq *held(const int *a, const int *ids, int n, struct item **its)
{
	struct workq *q;

	n_order = 0;
	sem_init(&gate, 0, 0);
	sem_init(&started, 0, 0);
	assert_int_equal(workq_build(1, run, drop, NULL, &q), 0);
	its[0] = item(0);
	workq_submit_as(q, &its[0]->link, a);
	sem_wait(&started);
	for (int i = 0; i < n; i++) {
		its[i + 1] = item(ids[i]);
		workq_submit_as(q, &its[i + 1]->link, a);
	}
	return q;
}

/* A queued 1..4 and then 9; B, with nothing queued, waits for 9 too: 9
 * goes under B's turns and runs next, not after A's four. The item that
 * runs, and one that is B's already, do not move. */
static void test_share(void **state)
{
	static const int a = 1, b = 2, ids[] = { 1, 2, 3, 4, 9 };
	struct item *its[6];
	struct workq *q;

	(void)state;
	q = held(&a, ids, 5, its);
	assert_false(workq_share(q, &its[0]->link, &b));
	assert_true(workq_share(q, &its[5]->link, &b));
	assert_false(workq_share(q, &its[5]->link, &b));
	sem_post(&gate);
	drain(q, 6);
	assert_int_equal(n_order, 6);
	assert_int_equal(order[0], 0);
	assert_int_equal(order[1], 9);
	for (int i = 1; i < 5; i++)
		assert_int_equal(order[i + 1], i);
	workq_free(q);
	sem_destroy(&gate);
	sem_destroy(&started);
}

/* A queued 1, B 100 and 101, A 9: B, with two waiting, would not come
 * sooner than A's one ahead of 9 (B's own ahead of it do not count), so 9
 * stays A's and runs after 1; C, with none waiting, does not take A's 1,
 * which has none ahead. */
static void test_share_stays(void **state)
{
	static const int a = 1, b = 2, c = 3, ids[] = { 1 };
	struct item *its[2], *nine = item(9);
	struct workq *q;

	(void)state;
	q = held(&a, ids, 1, its);
	workq_submit_as(q, &item(100)->link, &b);
	workq_submit_as(q, &item(101)->link, &b);
	workq_submit_as(q, &nine->link, &a);
	assert_false(workq_share(q, &nine->link, &b));
	assert_false(workq_share(q, &its[1]->link, &c));
	sem_post(&gate);
	drain(q, 5);
	assert_int_equal(n_order, 5);
	/* B's record came last: its turn first (a tie with A's), then by turns */
	assert_int_equal(order[1], 100);
	assert_int_equal(order[2], 1);
	assert_int_equal(order[3], 101);
	assert_int_equal(order[4], 9);
	workq_free(q);
	sem_destroy(&gate);
	sem_destroy(&started);
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
		cmocka_unit_test(test_share),
		cmocka_unit_test(test_share_stays),
		cmocka_unit_test(test_cancel),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
