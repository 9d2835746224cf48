// A lone UTF-16 surrogate (half of a pair, as a string cut by code units or a bad decode
// leaves) is written by JSON.stringify as an escape such as `\ud800`, which strict JSON readers
// (Rust's serde_json, so Vector) refuse, dropping the whole line. The logger writes U+FFFD in
// its place, as a UTF-8 encoder would, wherever the string comes from.
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'

// An escaped surrogate that is not one half of an escaped pair.
const loneEscape =
  /\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}/i

describe('logger: lone surrogates', () => {
  it('writes U+FFFD for a lone surrogate in the message, values, names and errors', () => {
    let raw = ''
    const output = {
      write(text: string) {
        raw += text
      },
    }
    const log = createJsonLogger({ output, fields: { bound: 'b\uDC00' } })
    log.info('m\uD800', {
      value: 'a\uD83Db',
      'key\uDFFF': 1,
      list: ['\uDC00x', 'pair 😀 kept'],
      map: new Map([['mk\uD800', 'v\uDBFF']]),
      error: new Error('e\uD800'),
    })
    log.child({ 'child\uD800': 'c\uDC00' }).warn('w')
    expect(raw).not.toMatch(loneEscape)
    const [first, second] = raw
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(first).toMatchObject({
      msg: 'm\uFFFD',
      bound: 'b\uFFFD',
      value: 'a\uFFFDb',
      'key\uFFFD': 1,
      list: ['\uFFFDx', 'pair 😀 kept'],
      map: { 'mk\uFFFD': 'v\uFFFD' },
      error: { message: 'e\uFFFD' },
    })
    expect(second).toMatchObject({ 'child\uFFFD': 'c\uFFFD' })
  })
})
