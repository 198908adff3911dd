/* SPDX-License-Identifier: MIT */
/*
 * Every option of the daemon, once: its config-file section and key, its
 * command-line spelling (the key with '-' for '_'), its type, default,
 * bounds and help text. The config file parser, the command-line parser
 * and `lorad --help` all read this one table, so a limit cannot exist in
 * one place and be missing from another. A value outside its bounds is
 * refused with a message that names the option and the bounds.
 */
#ifndef LORAD_OPTIONS_H
#define LORAD_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config;

enum opt_type {
	OPT_PATH,       /* char *: a file or directory */
	OPT_ENUM,       /* char *: one of opt_def.choices */
	OPT_BOOL,       /* bool */
	OPT_U32,        /* uint32_t, decimal */
	OPT_SIZE,       /* uint64_t: 4096, 64K, 512M, 2G */
	OPT_MODE,       /* unsigned, octal permissions */
	OPT_CPU,        /* int: a CPU number, -1 = none */
	OPT_LEVEL,      /* int: a syslog level name */
	OPT_USERS,      /* uid list: names or numbers, separated by spaces or commas */
	OPT_GROUPS,     /* gid list */
	OPT_GROUP,      /* one gid */
};

struct opt_def {
	const char *key;          /* config key; the command line's --key with '-' */
	const char *section;      /* [daemon], [limits], [access], [pool] */
	enum opt_type type;
	size_t off;               /* field of struct config */
	uint64_t def;             /* numbers: the default (paths and enums: see def_str) */
	const char *def_str;      /* for --help; NULL: printed from def */
	uint64_t min, max;        /* numbers: bounds (inclusive) */
	const char *choices;      /* OPT_ENUM: "auto|cpu|cuda" */
	const char *arg;          /* --help's name of the value: N, SIZE, DIR */
	const char *help;
	bool reload;              /* a SIGHUP applies it to the running daemon */
};

extern const struct opt_def opt_table[];
extern const unsigned opt_count;

/* The option with config key (or command-line name) @name, or NULL. */
const struct opt_def *opt_find(const char *name);

/* The option @key of [@section], or NULL. */
const struct opt_def *opt_find_in(const char *section, const char *key);

/* Fill @c with every default of the table. */
void opt_defaults(struct config *c);

/*
 * Parse @val into @c for @o. Lists (OPT_USERS, OPT_GROUPS) append. Returns
 * 0, or -EINVAL with one line in @err naming the option and what it takes.
 */
int opt_set(const struct opt_def *o, struct config *c, const char *val, char *err, size_t errlen);

/* The option list for `lorad --help`, grouped by section. */
void opt_print_help(FILE *f);

enum opt_man {
	OPT_MAN_CLI,    /* lorad(8)'s OPTIONS: "--max-clients N" */
	OPT_MAN_CONF,   /* lorad.conf(5)'s keys: "max_clients = N" */
};

/*
 * The same list in roff (man(7)) for the manual pages, built from this
 * table at build time (docs/man/, lorad-manpage), so they cannot drift
 * from --help: one .SS per section, one .TP per option with its help, its
 * default, its bounds and whether a reload applies it.
 */
void opt_print_man(FILE *f, enum opt_man what);

/* "64M", "2G", "4096": bytes. Returns 0 or -EINVAL. */
int opt_parse_size(const char *s, uint64_t *out);

/* Replace the string *@dst with a copy of @v. Returns 0 or -ENOMEM. */
int opt_set_str(char **dst, const char *v);

#endif
