// Method globs as wasmhooks reads them: `*` any run of characters, `?` one.

/** Whether `method` matches the glob `pattern`. */
export function globMatch(pattern, method) {
  return compile(pattern).test(method)
}

const compiled = new Map()

function compile(pattern) {
  let re = compiled.get(pattern)
  if (re === undefined) {
    const body = Array.from(pattern, c =>
      c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&')
    ).join('')
    re = new RegExp(`^${body}$`, 's')
    compiled.set(pattern, re)
  }
  return re
}
