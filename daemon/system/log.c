/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LOG_LINE   512
#define LOG_QUEUE  256

static int log_level = LOG_PRI_INFO;

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool running, stopping;
	char lines[LOG_QUEUE][LOG_LINE];
	unsigned len[LOG_QUEUE];
	unsigned head, tail;          /* free-running */
	unsigned long dropped;
} q = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

void log_set_level(int max_pri)
{
	log_level = max_pri;
}

static void write_all(const char *buf, size_t n)
{
	while (n) {
		ssize_t k = write(STDERR_FILENO, buf, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return;
		buf += k;
		n -= k;
	}
}

static void *writer(void *arg)
{
	char line[LOG_LINE];
	unsigned len;

	(void)arg;
	pthread_mutex_lock(&q.lock);
	for (;;) {
		while (q.head == q.tail && !q.stopping)
			pthread_cond_wait(&q.cond, &q.lock);
		if (q.head == q.tail && q.stopping)
			break;
		len = q.len[q.head % LOG_QUEUE];
		memcpy(line, q.lines[q.head % LOG_QUEUE], len);
		q.head++;
		pthread_mutex_unlock(&q.lock);
		write_all(line, len);      /* may block on the journal: only this thread waits */
		pthread_mutex_lock(&q.lock);
	}
	pthread_mutex_unlock(&q.lock);
	return NULL;
}

int log_start(void)
{
	int ret;

	pthread_mutex_lock(&q.lock);
	q.stopping = false;
	ret = -pthread_create(&q.thread, NULL, writer, NULL);
	q.running = ret == 0;
	pthread_mutex_unlock(&q.lock);
	return ret;
}

void log_stop(void)
{
	pthread_mutex_lock(&q.lock);
	if (!q.running) {
		pthread_mutex_unlock(&q.lock);
		return;
	}
	q.stopping = true;
	pthread_cond_signal(&q.cond);
	pthread_mutex_unlock(&q.lock);
	pthread_join(q.thread, NULL);
	q.running = false;
}

static unsigned format_line(char *line, int pri, const char *fmt, va_list ap)
{
	int n = snprintf(line, LOG_LINE, "<%d>", pri);

	n += vsnprintf(line + n, LOG_LINE - n - 1, fmt, ap);
	if (n > LOG_LINE - 2)
		n = LOG_LINE - 2;
	/* one event, one line: a newline inside a message would split it */
	for (int i = 3; i < n; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[n++] = '\n';
	return (unsigned)n;
}

static void enqueue(const char *line, unsigned n)
{
	if (q.tail - q.head >= LOG_QUEUE) {
		q.dropped++;
		return;
	}
	memcpy(q.lines[q.tail % LOG_QUEUE], line, n);
	q.len[q.tail % LOG_QUEUE] = n;
	q.tail++;
}

void log_msg(int pri, const char *fmt, ...)
{
	char line[LOG_LINE];
	va_list ap;
	unsigned n;

	if (pri > log_level)
		return;
	va_start(ap, fmt);
	n = format_line(line, pri, fmt, ap);
	va_end(ap);

	pthread_mutex_lock(&q.lock);
	if (!q.running) {
		pthread_mutex_unlock(&q.lock);
		write_all(line, n);
		return;
	}
	if (q.dropped && q.tail - q.head < LOG_QUEUE - 1) {
		char note[80];
		unsigned k = (unsigned)snprintf(note, sizeof(note),
						"<4>%lu log lines dropped: the journal was slow\n",
						q.dropped);

		q.dropped = 0;
		enqueue(note, k);
	}
	enqueue(line, n);
	pthread_cond_signal(&q.cond);
	pthread_mutex_unlock(&q.lock);
}

bool log_ratelimit_ok(struct log_ratelimit *rl, uint64_t now, const char *who)
{
	if (now - rl->window_start >= LOG_RL_INTERVAL) {
		if (rl->suppressed)
			log_warn("%s: %u similar messages suppressed", who, rl->suppressed);
		rl->window_start = now;
		rl->n = 0;
		rl->suppressed = 0;
	}
	if (rl->n < LOG_RL_BURST) {
		rl->n++;
		return true;
	}
	rl->suppressed++;
	return false;
}
