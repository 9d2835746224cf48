// The header checks said the wrong thing: a name that is not an HTTP token ('bad name') was told
// "expected a header name the client does not manage itself", a value that is not a string (5)
// "expected a header value without CR, LF or NUL". Each refusal now names its real problem.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createHttpClient } from '../../src/http/index.js'
import { addHeaders } from '../../src/http/request-target.js'

function refusal(headers: unknown): InvalidOptionError {
  try {
    addHeaders({}, 'request.headers', headers)
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  throw new Error('accepted')
}

describe('addHeaders names what is wrong with a header', () => {
  it('a name that is not an HTTP token', () => {
    for (const name of ['bad name', 'x:y', 'é', '']) {
      expect(refusal({ [name]: 'x' }).message).toBe(
        `request.headers.${name}: expected a header name that is an HTTP token (letters, digits and !#$%&'*+-.^_\`|~), got ${JSON.stringify(name)}`,
      )
    }
  })

  it('a name the client sets itself', () => {
    expect(refusal({ Host: 'evil' }).message).toBe(
      'request.headers.Host: expected a header name the client does not manage itself, got "Host"',
    )
  })

  it('a value that is not a string', () => {
    expect(refusal({ 'x-a': 5 }).message).toBe(
      'request.headers.x-a: expected a string or an array of strings, got 5',
    )
    expect(refusal({ 'x-a': ['1', 2] }).message).toBe(
      'request.headers.x-a: expected a string or an array of strings, got 2',
    )
    expect(refusal({ 'x-a': null }).message).toBe(
      'request.headers.x-a: expected a string or an array of strings, got null',
    )
    // A secret header's value stays out of the message even when it is not a string.
    expect(refusal({ authorization: 12345 }).message).not.toContain('12345')
  })

  it('a string value with a character a header cannot carry', () => {
    for (const value of ['v\r\nx-b: 1', 'a\0b', 'a\x01b', 'a\u20acb']) {
      expect(refusal({ 'x-a': value }).message).toBe(
        `request.headers.x-a: expected a header value of tabs, printable ASCII and U+0080 to U+00FF only (no CR, LF, NUL or other ASCII control character), got ${JSON.stringify(value)}`,
      )
    }
    const into: Record<string, string | string[]> = {}
    addHeaders(into, 'request.headers', { 'X-A': 'caf\u00e9\tau lait', 'x-b': ['1', '2'] })
    expect(into).toEqual({ 'x-a': 'caf\u00e9\tau lait', 'x-b': ['1', '2'] })
  })

  it('a service header, through createHttpClient', () => {
    const make = (headers: Record<string, unknown>) => () =>
      createHttpClient({ services: { a: { baseUrl: 'http://127.0.0.1:1', headers } } } as never)
    expect(make({ 'bad name': 'x' })).toThrow(
      /^services\.a\.headers\.bad name: expected a header name that is an HTTP token/,
    )
    expect(make({ 'x-a': 5 })).toThrow(
      'services.a.headers.x-a: expected a string or an array of strings, got 5',
    )
  })
})
