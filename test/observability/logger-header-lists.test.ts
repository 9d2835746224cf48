// Headers that reach a log as lists rather than objects: Node's `req.rawHeaders` (names and
// values alternate in one flat array), `Object.entries(headers)` ([name, value] pairs), a Map,
// a WHATWG Headers spread into pairs. A secret header's value sits beside its name, not under
// it, and must be masked as a secret-named field's value is.
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'

function logged(fields: Record<string, unknown>, redactKeys?: string[]): Record<string, unknown> {
  let text = ''
  const log = createJsonLogger({
    output: {
      write(t: string) {
        text += t
      },
    },
    ...(redactKeys === undefined ? {} : { redactKeys }),
  })
  log.info('request', fields)
  for (const secret of ['sid=abc', 'tok-123', 'k3y-value', 'ses-9'])
    expect(text, `${secret} leaked`).not.toContain(secret)
  return JSON.parse(text) as Record<string, unknown>
}

describe('JSON logger: header lists', () => {
  it('masks the value after a secret header name in a flat rawHeaders list', () => {
    const rawHeaders = ['Host', 'x', 'Cookie', 'sid=abc', 'Authorization', 'Bearer tok-123']
    expect(logged({ rawHeaders }).rawHeaders).toEqual([
      'Host',
      'x',
      'Cookie',
      '[redacted]',
      'Authorization',
      '[redacted]',
    ])
    // Nested, and any spelling of the names.
    const req = { method: 'GET', rawHeaders: ['COOKIE', 'sid=abc', 'x-api-key', 'k3y-value'] }
    expect(logged({ req }).req).toEqual({
      method: 'GET',
      rawHeaders: ['COOKIE', '[redacted]', 'x-api-key', '[redacted]'],
    })
  })

  it('masks [name, value] pairs from Object.entries, a Map spread or a Headers object', () => {
    const headers = { host: 'x', cookie: 'sid=abc', 'set-cookie': ['ses-9', 'sid=abc'] }
    expect(logged({ entries: Object.entries(headers) }).entries).toEqual([
      ['host', 'x'],
      ['cookie', '[redacted]'],
      ['set-cookie', '[redacted]'],
    ])
    const map = new Map([
      ['Authorization', 'Bearer tok-123'],
      ['accept', '*/*'],
    ])
    expect(logged({ map, pairs: [...map] })).toMatchObject({
      map: { Authorization: '[redacted]', accept: '*/*' },
      pairs: [
        ['Authorization', '[redacted]'],
        ['accept', '*/*'],
      ],
    })
    const web = new Headers({ cookie: 'sid=abc', accept: '*/*' })
    expect(logged({ web: [...web] }).web).toEqual([
      ['accept', '*/*'],
      ['cookie', '[redacted]'],
    ])
  })

  it('takes redactKeys names as header names too', () => {
    expect(logged({ rawHeaders: ['X-Tenant-Sig', 'ses-9'] }, ['x-tenant-sig']).rawHeaders).toEqual([
      'X-Tenant-Sig',
      '[redacted]',
    ])
  })

  it('leaves ordinary arrays alone', () => {
    const tags = ['token', 'cookie', 'password']
    const names = ['a', 'token', 'b', 'c']
    const mixed = [1, 'token', 2, 'x']
    expect(logged({ tags, names, mixed })).toMatchObject({ tags, names, mixed })
  })
})
