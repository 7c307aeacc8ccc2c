// Formatting helpers of the web page, in their own file so that they can be tested without a browser
// (tests/test_service_hardening.py runs them under Node when it is installed).
"use strict";

// An item's capture time (epoch seconds) as ISO 8601; "invalid time (<value>)" for a value no Date can
// hold (epoch microseconds, say), so one bad item never stops the page from rendering the others.
function formatTime(seconds) {
  if (seconds === null || seconds === undefined) return null;
  const date = new Date(Number(seconds) * 1000);
  if (Number.isNaN(date.getTime())) return "invalid time (" + String(seconds) + ")";
  return date.toISOString().replace(".000Z", "Z");
}

if (typeof module !== "undefined") module.exports = { formatTime };
