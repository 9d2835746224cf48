import { describe, expect, it } from 'vitest'
import { emptyHeaderRecord, HeaderRecord } from '../../src/proxy/hop-by-hop.js'

// The proxy's header records are built per request from names the client or upstream chose:
// nothing may be inherited, and `__proto__` must be an ordinary key.
describe('header records', () => {
  for (const [label, make] of [
    ['emptyHeaderRecord()', () => emptyHeaderRecord()],
    ['new HeaderRecord()', () => new HeaderRecord()],
  ] as const) {
    it(`${label} inherits nothing and keeps any header name`, () => {
      const headers = make() as Record<string, unknown>
      for (const name of ['constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
        expect(name in headers).toBe(false)
        expect(headers[name]).toBeUndefined()
      }
      // Assigned through variables: TypeScript types `constructor` as Object's, and biome flags
      // `__proto__` as the accessor, which these records do not have.
      const [proto, ctor] = ['__proto__', 'constructor']
      headers[proto] = 'x'
      headers[ctor] = 'y'
      expect(Object.keys(headers)).toEqual(['__proto__', 'constructor'])
      expect(headers[proto]).toBe('x')
      expect(JSON.stringify(headers)).toBe('{"__proto__":"x","constructor":"y"}')
      expect({ ...headers }).toEqual(headers)
      const seen: string[] = []
      for (const key in headers) seen.push(key)
      expect(seen).toEqual(['__proto__', 'constructor'])
    })
  }
})
