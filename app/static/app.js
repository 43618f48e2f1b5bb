// The page's own behaviour, without inline handlers (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  // A secret shown once (an API key, an invite, a registration command) is selected whole on click, to copy.
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target instanceof HTMLInputElement && target.classList.contains("secret")) {
      target.select();
    }
  });
})();
