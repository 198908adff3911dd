/* SPDX-License-Identifier: MIT */
/*
 * Prints the size and field offsets of every structure of lorad.h that the
 * Python client mirrors with ctypes (python/lorad/_ffi.py), as JSON, for
 * python/tests/test_layout.py to compare. A field added to the header
 * changes a size here; one renamed or moved changes a name or an offset.
 */
#include <stddef.h>
#include <stdio.h>

#include <lorad/lorad.h>

#define BEGIN(s) do { printf("%s\"%s\": {\"size\": %zu, \"fields\": {", first_s ? "" : ", ", #s, \
			       sizeof(struct s)); first_s = 0; first_f = 1; } while (0)
#define F(s, f) do { printf("%s\"%s\": %zu", first_f ? "" : ", ", #f, offsetof(struct s, f)); \
		     first_f = 0; } while (0)
#define END() printf("}}")

int main(void)
{
	int first_s = 1, first_f = 1;

	printf("{");
	BEGIN(lorad_connect_opts);
	F(lorad_connect_opts, sq_entries); F(lorad_connect_opts, cq_entries);
	F(lorad_connect_opts, arena_size); F(lorad_connect_opts, max_inflight);
	F(lorad_connect_opts, timeout_ms); F(lorad_connect_opts, spin_us);
	F(lorad_connect_opts, results_size);
	END();

	BEGIN(lorad_request);
	F(lorad_request, user_data); F(lorad_request, skill); F(lorad_request, routing_key);
	F(lorad_request, prompt); F(lorad_request, n_prompt); F(lorad_request, max_tokens);
	F(lorad_request, out); F(lorad_request, temperature); F(lorad_request, top_p);
	F(lorad_request, min_p); F(lorad_request, repetition_penalty);
	F(lorad_request, presence_penalty); F(lorad_request, top_k); F(lorad_request, seed);
	F(lorad_request, deadline_ns); F(lorad_request, flags); F(lorad_request, priority);
	F(lorad_request, stop_ids); F(lorad_request, n_stop_ids); F(lorad_request, min_tokens);
	F(lorad_request, logit_bias); F(lorad_request, n_logit_bias);
	F(lorad_request, prompt_text); F(lorad_request, prompt_text_len);
	F(lorad_request, out_text); F(lorad_request, out_text_cap); F(lorad_request, stop);
	F(lorad_request, n_stop); F(lorad_request, times); F(lorad_request, routing_key_bytes);
	F(lorad_request, routing_key_len); F(lorad_request, result); F(lorad_request, result_at);
	F(lorad_request, grammar); F(lorad_request, grammar_text); F(lorad_request, grammar_len);
	F(lorad_request, why); F(lorad_request, why_cap);
	END();

	BEGIN(lorad_event);
	F(lorad_event, user_data); F(lorad_event, res); F(lorad_event, flags);
	F(lorad_event, finish); F(lorad_event, field); F(lorad_event, n_tokens);
	F(lorad_event, n_new); F(lorad_event, checksum); F(lorad_event, queue_us);
	F(lorad_event, ttft_us); F(lorad_event, itl_us); F(lorad_event, version);
	F(lorad_event, queue_steps); F(lorad_event, step); F(lorad_event, text_len);
	F(lorad_event, text_new); F(lorad_event, skill); F(lorad_event, version_id);
	F(lorad_event, n_prompt);
	END();

	BEGIN(lorad_times);
	F(lorad_times, seen_ns); F(lorad_times, admitted_ns); F(lorad_times, first_token_ns);
	F(lorad_times, final_ns);
	END();

	BEGIN(lorad_logit_bias);
	F(lorad_logit_bias, token); F(lorad_logit_bias, bias);
	END();

	BEGIN(lorad_result);
	F(lorad_result, host); F(lorad_result, device); F(lorad_result, cuda_device);
	F(lorad_result, row_floats); F(lorad_result, rows); F(lorad_result, id);
	END();

	BEGIN(lorad_results_info);
	F(lorad_results_info, where); F(lorad_results_info, why); F(lorad_results_info, vocab);
	F(lorad_results_info, hidden); F(lorad_results_info, device_size);
	F(lorad_results_info, cuda_device); F(lorad_results_info, open_ns);
	END();

	BEGIN(lorad_stats);
	F(lorad_stats, submitted); F(lorad_stats, reaped); F(lorad_stats, sq_doorbells);
	F(lorad_stats, sleeps); F(lorad_stats, daemon_cq_doorbells); F(lorad_stats, daemon_sleeps);
	END();
	printf("}\n");
	return 0;
}
