/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as the state directory's state.json, read at start by
 * registry_load_state(). A refused file must say why and leave the registry
 * empty; an accepted one is walked (versions, routes: every bucket names one
 * of its route's targets, every target a version the file has), saved, and
 * must load again into a fresh registry to the same state: whatever lorad
 * accepted and wrote, it reads back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "registry.h"
#include "route.h"
#include "statedir.h"

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define DIE(...) do { fprintf(stderr, "fuzz_state: " __VA_ARGS__); abort(); } while (0)

static struct statedir *sd;

static void init(void)
{
	char path[512], err[600];

	log_set_level(getenv("LORAD_FUZZ_LOG") ? LOG_PRI_DEBUG : 0);
	snprintf(path, sizeof(path), "%s/state", fuzz_tmpdir("state"));
	if (statedir_open(path, &sd, err, sizeof(err)))
		DIE("%s\n", err);
}

/* The state as lorad would write it (malloc'd). */
static char *text_of(struct registry *reg, size_t *len)
{
	char *text, err[256];

	if (registry_change_text(reg, NULL, &text, len, err, sizeof(err)))
		abort();
	return text;
}

static void walk(struct registry *reg)
{
	struct route_table *rt = registry_routes(reg);
	const struct reg_version *v;
	const struct route *r;

	for (unsigned i = 0; (v = registry_at(reg, i)); i++) {
		CHECK(registry_find(reg, v->id) == v);
		CHECK(registry_by_vid(reg, v->vid) == v);
		CHECK(v->pe->path[0] == '/' && strlen(v->pe->h.sha256) == 64);
	}
	for (unsigned i = 0; (r = route_at(rt, i)); i++) {
		CHECK(r->n >= 1 && r->n <= ROUTE_MAX_VERSIONS);
		CHECK(registry_skill_known(reg, r->skill) && route_get(rt, r->skill) == r);
		for (unsigned k = 0; k < r->n; k++)
			CHECK(registry_find(reg, r->target[k]) != NULL);
		for (uint64_t key = 0; key < 64; key++) {
			const char *t = route_pick(r, key * 0x9e3779b97f4a7c15ull);

			CHECK(t >= r->target[0] && t <= r->target[r->n - 1]);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct registry *reg, *again;
	char err[600] = "", *t1, *t2;
	size_t l1, l2;
	int ret;

	if (!sd)
		init();
	if (statedir_write(sd, "state.json", data, size, err, sizeof(err)))
		DIE("%s\n", err);
	reg = registry_new(sd, NULL);
	if (!reg)
		abort();
	ret = registry_load_state(reg, err, sizeof(err));
	if (ret) {
		CHECK(ret < 0 && err[0]);
		CHECK(!registry_at(reg, 0) && !route_at(registry_routes(reg), 0));   /* nothing half-loaded */
		registry_free(reg);
		return 0;
	}
	walk(reg);
	t1 = text_of(reg, &l1);
	ret = registry_save(reg, err, sizeof(err));
	CHECK(ret == 0);
	registry_free(reg);

	/* what lorad wrote, it reads back, to the same state */
	again = registry_new(sd, NULL);
	if (!again)
		abort();
	ret = registry_load_state(again, err, sizeof(err));
	CHECK(ret == 0);
	t2 = text_of(again, &l2);
	CHECK(l1 == l2 && !memcmp(t1, t2, l1));
	registry_free(again);
	free(t1);
	free(t2);
	return 0;
}
