// `methods` took any non-empty string: ' POST', 'POST ', 'PO ST' and 'POST,PATCH' were accepted,
// appliesTo('POST') was then false, and every POST ran without idempotency, silently. An empty
// list did the same. Each entry must now be an HTTP method (an RFC 9110 token), and the list must
// name at least one; a refusal names the entry and says what is wrong with it.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createIdempotency, createMemoryIdempotencyStore } from '../../src/idempotency/index.js'

const withMethods = (methods: readonly string[]) =>
  createIdempotency({ store: createMemoryIdempotencyStore(), methods })

/** The error `createIdempotency` throws for `methods`, or undefined. */
function refusal(methods: readonly string[]): InvalidOptionError | undefined {
  try {
    withMethods(methods)
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  return undefined
}

describe('the methods option', () => {
  it.each([
    [[' POST'], 'methods[0]'],
    [['POST '], 'methods[0]'],
    [['PO ST'], 'methods[0]'],
    [['PATCH', 'POST\t'], 'methods[1]'],
    [['POST', 'DELETE\n'], 'methods[1]'],
    [['PÓST'], 'methods[0]'],
    [['POST', ''], 'methods[1]'],
  ])('refuses %j, naming %s, as not an HTTP method', (methods, option) => {
    const error = refusal(methods)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option })
    expect(error?.message).toMatch(/HTTP token characters/)
    expect(error?.message).toContain(JSON.stringify(methods[Number(option.slice(8, -1))]))
  })

  it.each([
    [['POST,PATCH'], 'methods[0]'],
    [['PUT', 'POST, PATCH'], 'methods[1]'],
  ])('refuses %j, naming %s, saying to list the methods separately', (methods, option) => {
    const error = refusal(methods)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option })
    expect(error?.message).toMatch(/one method per entry/)
    expect(error?.message).toMatch(/\['POST', 'PATCH'\]/)
  })

  it('refuses an entry that is not a string, naming it', () => {
    const error = refusal(['POST', 7 as unknown as string])
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'methods[1]', value: 7 })
  })

  it('refuses an empty list: to turn idempotency off, leave it out', () => {
    const error = refusal([])
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'methods' })
    expect(error?.message).toMatch(/at least one HTTP method/)
    expect(error?.message).toMatch(/do not install/)
  })

  it('takes method names in any case and matches requests case-insensitively', () => {
    const idempotency = withMethods(['post', 'Patch'])
    expect(idempotency.appliesTo('POST')).toBe(true)
    expect(idempotency.appliesTo('post')).toBe(true)
    expect(idempotency.appliesTo('PATCH')).toBe(true)
    expect(idempotency.appliesTo('PUT')).toBe(false)
  })

  it('takes methods that are tokens but not the usual ones', () => {
    const idempotency = withMethods(['PURGE', 'M-SEARCH'])
    expect(idempotency.appliesTo('PURGE')).toBe(true)
    expect(idempotency.appliesTo('M-SEARCH')).toBe(true)
  })
})
