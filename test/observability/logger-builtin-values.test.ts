// Built-in values whose data is not in own enumerable properties (WHATWG Headers,
// URLSearchParams, RegExp, boxed primitives, ArrayBuffer, a Map keyed by objects) were written
// `{}` or lost their keys: each is given a JSON form that says what it held, through the same
// masking, cuts and budget as any other value.
import vm from 'node:vm'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'

function logged(
  fields: Record<string, unknown>,
  secrets: readonly string[] = [],
): Record<string, unknown> {
  let text = ''
  const log = createJsonLogger({
    output: {
      write(t: string) {
        text += t
      },
    },
  })
  log.info('m', fields)
  expect(text.endsWith('\n')).toBe(true)
  expect(text.indexOf('\n')).toBe(text.length - 1)
  for (const secret of secrets) expect(text, `${secret} leaked`).not.toContain(secret)
  return JSON.parse(text) as Record<string, unknown>
}

describe('JSON logger: built-in values whose data is not in their own properties', () => {
  it('writes a Headers object as its header pairs, secret ones redacted', () => {
    const headers = new Headers({
      Authorization: 'Bearer tok-12345678',
      'x-tenant': 'acme',
      'x-callback': 'https://app:pw-9@hooks.example/x',
      Cookie: 'sid=abc',
    })
    headers.append('set-cookie', 'a=ses-1')
    headers.append('set-cookie', 'b=ses-2')
    headers.append('accept', 'text/html')
    headers.append('accept', 'application/json')
    const line = logged({ headers }, ['tok-12345678', 'pw-9', 'sid=abc', 'ses-1', 'ses-2'])
    expect(line.headers).toEqual({
      accept: 'text/html, application/json',
      authorization: '[redacted]',
      cookie: '[redacted]',
      'set-cookie': '[redacted]',
      'x-callback': 'https://app:***@hooks.example/x',
      'x-tenant': 'acme',
    })
  })

  it('writes URLSearchParams as its pairs, a repeated name as a list, secret names redacted', () => {
    const params = new URLSearchParams('q=a&q=b&password=pw-9&page=2')
    expect(logged({ params }, ['pw-9']).params).toEqual({
      q: ['a', 'b'],
      password: '[redacted]',
      page: '2',
    })
  })

  it('writes a RegExp as its source text, a boxed primitive as its value', () => {
    const line = logged(
      {
        re: /^a.b$/gi,
        str: new String('text'),
        num: new Number(3),
        bool: new Boolean(false),
        big: Object(10n),
        boxedUrl: new String('postgres://u:pw-9@db/app'),
      },
      ['pw-9'],
    )
    expect(line).toMatchObject({
      re: '/^a.b$/gi',
      str: 'text',
      num: 3,
      bool: false,
      big: '10',
      boxedUrl: 'postgres://u:***@db/app',
    })
  })

  it('writes an ArrayBuffer as its size, as a typed array or Buffer is, never its contents', () => {
    const big = new ArrayBuffer(4 * 1024 * 1024)
    const line = logged({ big, shared: new SharedArrayBuffer(8), buf: Buffer.from('secret') })
    expect(line).toMatchObject({ big: '[4194304 bytes]', shared: '[8 bytes]', buf: '[6 bytes]' })
  })

  it('writes a Map with keys that are not text as [key, value] pairs', () => {
    const user = { id: 7 }
    const map = new Map<unknown, unknown>([
      [user, 'first'],
      [{ id: 8 }, 'second'],
      ['password', 'pw-9'],
    ])
    expect(logged({ map }, ['pw-9']).map).toEqual([
      [{ id: 7 }, 'first'],
      [{ id: 8 }, 'second'],
      ['password', '[redacted]'],
    ])
    // Keys that are text, numbers or booleans keep the object form.
    expect(
      logged({
        map: new Map<unknown, unknown>([
          [1, 'a'],
          ['b', 2],
        ]),
      }).map,
    ).toEqual({ 1: 'a', b: 2 })
  })

  it('keeps cycles, depth cuts and the line budget for these forms', () => {
    const map = new Map<unknown, unknown>()
    map.set({ k: 1 }, map)
    expect(logged({ map }).map).toEqual([[{ k: 1 }, '[circular]']])
    let deep: unknown = new Headers({ a: '1' })
    for (let i = 0; i < 10; i++) deep = { deep }
    expect(JSON.stringify(logged({ deep }).deep)).toContain('[too deep]')
    const many = new URLSearchParams()
    for (let i = 0; i < 2_000; i++) many.append(`k${i}`, 'v'.repeat(1_000))
    const params = logged({ params: many }).params as Record<string, unknown>
    expect(JSON.stringify(params).length).toBeLessThan(1_200_000)
    expect(params['…']).toBe('[truncated]')
  })

  it('writes another built-in object with no own data as its kind rather than {}', () => {
    const line = logged({
      signal: AbortSignal.abort(),
      pending: Promise.resolve(1),
      weak: new WeakMap(),
      plain: {},
      instance: new (class Empty {})(),
    })
    expect(line).toMatchObject({
      signal: '[AbortSignal]',
      pending: '[Promise]',
      weak: '[WeakMap]',
      plain: {},
      instance: {},
    })
  })

  it('knows these values when they come from another realm', () => {
    const other = vm.runInNewContext(
      '({ re: /x+/g, map: new Map([[{}, 1]]), buf: new ArrayBuffer(3), str: new String("s") })',
    ) as Record<string, unknown>
    expect(logged(other)).toMatchObject({ re: '/x+/g', map: [[{}, 1]], buf: '[3 bytes]', str: 's' })
  })
})
