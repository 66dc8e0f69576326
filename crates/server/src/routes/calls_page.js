// The live call log page's script (served as /calls.js; no build step).
"use strict";
