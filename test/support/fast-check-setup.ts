// Every test file's fast-check settings. With fast-check 4 an arbitrary's size defaults to
// "small" even when the test names a maximum, so `fc.array(x, { maxLength: 80 })` never went
// past about ten items; a test that names a maximum means to reach it.
import fc from 'fast-check'

fc.configureGlobal({ defaultSizeToMaxWhenMaxSpecified: true })
