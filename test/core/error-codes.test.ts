import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { errorCodes } from '../../src/core/error-codes.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'

describe('error codes', () => {
  it('docs/errors.md documents exactly the codes in error-codes.ts', () => {
    const docs = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8')
    const documented = [...docs.matchAll(/^## ([A-Z_]+)$/gm)].map((m) => m[1]).sort()
    expect(documented).toEqual(Object.keys(errorCodes).sort())
  })

  it('brands errors so they are recognised without instanceof', () => {
    const error = new InvalidOptionError('retry.maxAttempts', 'an integer >= 1', 0)
    expect(BreakwaterError.is(error)).toBe(true)
    expect(BreakwaterError.is(new Error('x'))).toBe(false)
    expect(BreakwaterError.is({ code: 'TIMEOUT' })).toBe(false)
    expect(error.message).toBe('retry.maxAttempts: expected an integer >= 1, got 0')
    expect(error.code).toBe('INVALID_OPTION')
  })
})
