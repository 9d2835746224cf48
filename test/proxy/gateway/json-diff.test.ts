import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  compareResponses,
  compilePathPatterns,
  diffJson,
  formatDifference,
  pointerSegments,
  toPointer,
  withoutNoise,
} from '../../../src/proxy/inbound/json-diff.js'
import { jsonResponse } from './fixtures.js'

describe('diffJson', () => {
  it('reports changed, missing and extra values with JSON-pointer paths', () => {
    const a = { id: 1, items: [{ id: 'x', qty: 1 }, { id: 'y' }], meta: { v: 1 }, gone: true }
    const b = {
      id: 1,
      items: [{ id: 'x', qty: 2 }, { id: 'z' }, { id: 'w' }],
      meta: { v: 1 },
      added: null,
    }
    expect(diffJson(a, b)).toEqual([
      { path: '/items/0/qty', primary: 1, shadow: 2 },
      { path: '/items/1/id', primary: 'y', shadow: 'z' },
      { path: '/items/2', primary: undefined, shadow: { id: 'w' } },
      { path: '/gone', primary: true, shadow: undefined },
      { path: '/added', primary: undefined, shadow: null },
    ])
  })

  it('reports a type change once, at the node', () => {
    expect(diffJson({ a: [1, 2] }, { a: { 0: 1 } })).toEqual([
      { path: '/a', primary: [1, 2], shadow: { 0: 1 } },
    ])
    expect(diffJson({ a: null }, { a: {} })).toEqual([{ path: '/a', primary: null, shadow: {} }])
    expect(diffJson('x', 1)).toEqual([{ path: '', primary: 'x', shadow: 1 }])
  })

  it('escapes ~ and / in member names', () => {
    expect(diffJson({ 'a/b': { '~c': 1 } }, { 'a/b': { '~c': 2 } })).toEqual([
      { path: '/a~1b/~0c', primary: 1, shadow: 2 },
    ])
    fc.assert(
      fc.property(fc.array(fc.string()), (segments) => {
        expect(pointerSegments(toPointer(segments))).toEqual(segments)
      }),
    )
  })

  it('finds nothing between equal documents and something between different ones', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.jsonValue(), (a, b) => {
        // JSON round trip: -0 and 0 are one number in JSON.
        const x = JSON.parse(JSON.stringify(a)) as unknown
        const y = JSON.parse(JSON.stringify(b)) as unknown
        expect(diffJson(x, structuredClone(x))).toEqual([])
        const same = JSON.stringify(x) === JSON.stringify(y)
        if (!same && diffJson(x, y).length === 0) {
          // Only member order may differ.
          expect(canonical(x)).toBe(canonical(y))
        }
      }),
    )
  })

  it('ignores configured subtrees, with * for one segment', () => {
    const ignore = compilePathPatterns(['/createdAt', '/items/*/id', '/meta'])
    const a = {
      createdAt: 1,
      items: [
        { id: 1, n: 1 },
        { id: 2, n: 2 },
      ],
      meta: { a: 1 },
      x: 1,
    }
    const b = {
      createdAt: 2,
      items: [
        { id: 9, n: 1 },
        { id: 8, n: 3 },
      ],
      meta: { a: 2 },
      x: 1,
    }
    expect(diffJson(a, b, { ignore })).toEqual([{ path: '/items/1/n', primary: 2, shadow: 3 }])
  })

  it('stops at maxDifferences', () => {
    const a = Array.from({ length: 50 }, (_, i) => i)
    const b = Array.from({ length: 50 }, (_, i) => i + 1)
    expect(diffJson(a, b, { maxDifferences: 5 })).toHaveLength(5)
  })
})

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (typeof value === 'object' && value !== null) {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`
  }
  return JSON.stringify(value)
}

describe('compareResponses', () => {
  it('compares status, headers (minus the noisy ones) and JSON bodies', () => {
    const a = jsonResponse({ id: 1 }, 200, {
      date: 'Mon',
      server: 'a',
      'x-version': '1',
      etag: '"a"',
    })
    const b = jsonResponse({ id: 2 }, 201, {
      date: 'Tue',
      server: 'b',
      'x-version': '2',
      etag: '"b"',
    })
    expect(compareResponses(a, b)).toEqual([
      { path: 'status', primary: 200, shadow: 201 },
      { path: 'header x-version', primary: '1', shadow: '2' },
      { path: '/id', primary: 1, shadow: 2 },
    ])
    expect(
      compareResponses(a, b, {
        ignoreHeaders: new Set(['x-version']),
        ignoreFields: compilePathPatterns(['/id']),
      }),
    ).toEqual([{ path: 'status', primary: 200, shadow: 201 }])
  })

  it('compares header names case-insensitively', () => {
    const a = jsonResponse({}, 200, { 'X-Version': '1' })
    const b = jsonResponse({}, 200, { 'x-version': '1', 'Content-Type': 'application/json' })
    expect(
      compareResponses(a, {
        ...b,
        headers: { 'x-version': '1', 'Content-Type': 'application/json' },
      }),
    ).toEqual([])
    expect(compareResponses(a, jsonResponse({}, 200, { 'x-VERSION': '2' }))).toEqual([
      { path: 'header x-version', primary: '1', shadow: '2' },
    ])
  })

  it('finds a content-type change and compares other bodies whole', () => {
    const text = (body: string, type = 'text/plain') => ({
      status: 200,
      headers: { 'content-type': type },
      body: Buffer.from(body),
      truncated: false,
    })
    expect(compareResponses(text('hello'), text('hello'))).toEqual([])
    const diff = compareResponses(text('hello'), text('hellO', 'text/html'))
    expect(diff.map((d) => d.path)).toEqual(['header content-type', 'body'])
    // Says JSON but is not: compared whole.
    expect(
      compareResponses(text('{', 'application/json'), text('{}', 'application/json')).map(
        (d) => d.path,
      ),
    ).toEqual(['body'])
    // +json media types are JSON.
    expect(
      compareResponses(
        text('{"a":1}', 'application/problem+json'),
        text('{"a":2}', 'application/problem+json'),
      ).map((d) => d.path),
    ).toEqual(['/a'])
  })
})

describe('noise', () => {
  it('drops differences at or below a noisy path, and only those', () => {
    const diffs = [
      { path: '/ts', primary: 1, shadow: 2 },
      { path: '/meta/trace/id', primary: 1, shadow: 2 },
      { path: '/metadata', primary: 1, shadow: 2 },
      { path: '/tsx', primary: 1, shadow: 2 },
      { path: 'header x-trace', primary: 'a', shadow: 'b' },
      { path: 'status', primary: 200, shadow: 500 },
    ]
    expect(
      withoutNoise(diffs, new Set(['/ts', '/meta', 'header x-trace'])).map((d) => d.path),
    ).toEqual(['/metadata', '/tsx', 'status'])
    expect(withoutNoise(diffs, new Set(['']))).toHaveLength(2)
  })

  it('learns noise from two primary responses (Diffy): timestamp noise goes, a real change stays', () => {
    const primary1 = jsonResponse({ id: 7, total: 10, at: '2026-11-29T10:00:00.001Z' })
    const primary2 = jsonResponse({ id: 7, total: 10, at: '2026-11-29T10:00:00.002Z' })
    const shadow = jsonResponse({ id: 7, total: 11, at: '2026-11-29T10:00:00.003Z' })
    const noise = new Set(compareResponses(primary1, primary2).map((d) => d.path))
    expect(noise).toEqual(new Set(['/at']))
    expect(withoutNoise(compareResponses(primary1, shadow), noise)).toEqual([
      { path: '/total', primary: 10, shadow: 11 },
    ])
  })
})

describe('formatDifference', () => {
  it('renders path: primary → shadow, cut short, with secrets hidden', () => {
    expect(formatDifference({ path: '/id', primary: 1, shadow: 'x' })).toBe('/id: 1 → "x"')
    expect(formatDifference({ path: '/id', primary: undefined, shadow: null })).toBe(
      '/id: (absent) → null',
    )
    expect(formatDifference({ path: '/a', primary: 'y'.repeat(200), shadow: 1 })).toMatch(
      /^\/a: "y{79}… → 1$/,
    )
    for (const path of [
      'header authorization',
      'header set-cookie',
      'header cookie',
      '/user/apiKey',
      '/password',
    ]) {
      const text = formatDifference({ path, primary: 'hunter2', shadow: 'hunter3' })
      expect(text).not.toContain('hunter')
      expect(text).toContain('[redacted]')
    }
    expect(
      formatDifference({ path: 'body', primary: Buffer.from('abc'), shadow: Buffer.from('abd') }),
    ).toBe('body: 3 bytes "abc" → 3 bytes "abd"')
  })
})
