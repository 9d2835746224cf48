import { describe, expect, it } from 'vitest'
import { httpTokenPattern, tokenChar } from '../../src/http/token.js'

describe('HTTP token', () => {
  it('the byte table and the pattern accept the same characters', () => {
    for (let c = 0; c < 256; c++) {
      expect(tokenChar[c] === 1, `char code ${c}`).toBe(
        httpTokenPattern.test(String.fromCharCode(c)),
      )
    }
    expect(tokenChar.reduce((n, v) => n + v, 0)).toBe(77)
  })
})
